// Selecting conversations in the list for a bulk action: the page's checkbox selects every
// row on the page, shift-click selects the range from the last row clicked, and "Select
// all N in this view" (a plain checkbox the form posts as all_in_view) is offered once the
// whole page is selected. Without this script the checkboxes and buttons still work; it
// only adds the shortcuts and the count. Listeners sit on the document, so rows that htmx
// swaps in need no setup.
(function () {
  "use strict";
  var lastClicked = null;

  function form() { return document.getElementById("bulk-form"); }
  function picks() {
    var f = form();
    return f ? Array.from(f.querySelectorAll("input[data-pick]")) : [];
  }

  function refresh() {
    var f = form();
    if (!f) return;
    var all = picks();
    var chosen = all.filter(function (box) { return box.checked; });
    var page = f.querySelector("input[data-pick-page]");
    var view = f.querySelector("input[data-pick-view]");
    var viewLabel = f.querySelector("[data-pick-view-label]");
    var count = f.querySelector("[data-selected-count]");
    var whole = all.length > 0 && chosen.length === all.length;
    if (page) {
      page.closest("label").hidden = false;  // without this script it could do nothing
      page.checked = whole;
      page.indeterminate = chosen.length > 0 && !whole;
    }
    if (view && viewLabel) {
      if (!whole) view.checked = false;
      viewLabel.hidden = !whole;
    }
    if (count) {
      count.textContent = view && view.checked ? ""
        : chosen.length ? chosen.length + " selected" : "Select conversations to act on several";
    }
    all.forEach(function (box) {
      var row = box.closest("[data-conversation-row]");
      if (row) row.classList.toggle("selected", box.checked);
    });
    f.setAttribute("data-enhanced", "");  // the actions show once something is selected
    f.classList.toggle("has-selection", chosen.length > 0);
  }

  document.addEventListener("click", function (event) {
    var box = event.target;
    if (!(box instanceof HTMLInputElement) || !box.matches("#bulk-form input[data-pick]")) return;
    var all = picks();
    if (event.shiftKey && lastClicked && all.indexOf(lastClicked) >= 0) {
      var from = all.indexOf(lastClicked);
      var to = all.indexOf(box);
      var lo = Math.min(from, to);
      var hi = Math.max(from, to);
      for (var i = lo; i <= hi; i++) all[i].checked = box.checked;
    }
    lastClicked = box;
  });

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!(box instanceof HTMLInputElement) || !box.closest("#bulk-form")) return;
    if (box.matches("input[data-pick-page]")) {
      picks().forEach(function (pick) { pick.checked = box.checked; });
    }
    refresh();
  });

  document.addEventListener("DOMContentLoaded", refresh);
  document.addEventListener("htmx:afterSettle", function () { lastClicked = null; refresh(); });
  refresh();
})();
