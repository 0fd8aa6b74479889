"use strict";
// Sortable tables: a click (or Enter) on a header sorts the rows by that column, a second click reverses.
// Numeric columns compare as numbers from each cell's data-value; cells without a value stay last.
function sortTable(table, col) {
  const th = table.tHead.rows[0].cells[col];
  const numeric = th.dataset.type === "num";
  const dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
  for (const h of table.tHead.rows[0].cells) h.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", dir);
  const sign = dir === "ascending" ? 1 : -1;
  const key = function (row) {
    const cell = row.cells[col];
    const text = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
    return numeric ? parseFloat(text) : text.toLowerCase();
  };
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort(function (a, b) {
    const x = key(a), y = key(b);
    if (numeric) {
      if (isNaN(x) || isNaN(y)) return Number(isNaN(x)) - Number(isNaN(y));
      return sign * (x - y);
    }
    return sign * x.localeCompare(y);
  });
  for (const row of rows) body.appendChild(row);
}
for (const table of document.querySelectorAll("table.sortable")) {
  Array.from(table.tHead.rows[0].cells).forEach(function (th, col) {
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortTable(table, col); });
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortTable(table, col); });
  });
}
// Large confusion matrices are pictures: hovering a cell names its classes and count.
for (const img of document.querySelectorAll("img.confusion-map")) {
  const data = JSON.parse(document.getElementById(img.dataset.cells).textContent);
  const tip = document.getElementById(img.dataset.tip);
  img.addEventListener("mousemove", function (e) {
    const n = data.names.length;
    const i = Math.min(n - 1, Math.floor(e.offsetY / img.clientHeight * n));
    const j = Math.min(n - 1, Math.floor(e.offsetX / img.clientWidth * n));
    const count = data.cells[i + "," + j] || 0;
    tip.textContent = "true " + data.names[i] + " \u2192 predicted " + data.names[j] + ": " + count + " of " +
      data.totals[i] + " videos";
  });
}
