// Keyboard shortcuts: j/k move through the inbox list, o/Enter opens, Escape goes back to
// the list from a message; buttons declare their own key with data-shortcut (r, u, #).
(function () {
  "use strict";
  function typing(el) {
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }
  function rows() { return Array.from(document.querySelectorAll("tr.message-row")); }
  function move(delta) {
    var all = rows();
    if (!all.length) return;
    var i = all.findIndex(function (r) { return r.classList.contains("cursor"); });
    var next = Math.max(0, Math.min(all.length - 1, i + delta));
    if (i >= 0) all[i].classList.remove("cursor");
    all[next].classList.add("cursor");
    all[next].scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var key = event.key;
    var button = document.querySelector('[data-shortcut="' + CSS.escape(key) + '"]');
    if (button) { event.preventDefault(); button.click(); return; }
    if (key === "j") { move(1); }
    else if (key === "k") { move(-1); }
    else if (key === "o" || key === "Enter") {
      var current = document.querySelector("tr.message-row.cursor a");
      if (current) current.click();
    } else if (key === "Escape") {
      var back = document.querySelector("a.crumb");
      if (back) back.click();
    }
  });
})();
