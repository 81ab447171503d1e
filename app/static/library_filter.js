// The library page's filter box: shows the rows whose text contains every word typed (any order, any case).
(function () {
  "use strict";
  var input = document.getElementById("library-filter");
  var table = document.getElementById("library-table");
  if (!input || !table) { return; }
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  var count = document.getElementById("library-filter-count");
  var texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
  function apply() {
    var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    rows.forEach(function (row, i) {
      var match = words.every(function (w) { return texts[i].indexOf(w) >= 0; });
      row.hidden = !match;
      if (match) { shown += 1; }
    });
    if (count) { count.textContent = shown + " of " + rows.length; }
  }
  input.addEventListener("input", apply);
  apply();
}());
