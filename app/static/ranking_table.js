// The ranking table: per-method or per-component columns start collapsed when there are many of them
// (TaskEmb has one per Fisher component); the button shows or hides them.
(function () {
  "use strict";
  var button = document.getElementById("toggle-parts");
  var table = document.getElementById("ranking-table");
  if (!button || !table) { return; }
  button.addEventListener("click", function () {
    var collapsed = table.classList.toggle("parts-collapsed");
    button.setAttribute("aria-expanded", collapsed ? "false" : "true");
    button.textContent = collapsed ? button.dataset.show : button.dataset.hide;
  });
}());
