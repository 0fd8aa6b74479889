"""The ground every package of the project stands on: the one error root, atomic writes, the device
setting, the `--set` grammar and progress bars.

It imports no package of the project, and every package may import it: the import rule is
`pipeline` -> `fusion` -> `streams` -> `flow` -> `p3dbase`.
"""
