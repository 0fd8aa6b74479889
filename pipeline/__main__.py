from pipeline.cli import run_program

run_program()
