// The toast after an action: the server says what happened with an htmx "toast" event
// (HX-Trigger, {"message": ..., "undo": {"url": ..., <field>: <value>}}); Undo posts the
// inverse action, whose answer brings its own toast. z clicks the Undo (shortcuts.js).
(function () {
  "use strict";
  var SHOWN_MS = 8000;
  var timer = null;

  function show(detail) {
    var box = document.getElementById("toasts");
    if (!box || !detail || !detail.message) return;
    box.textContent = "";
    var toast = document.createElement("div");
    toast.className = "toast";
    var text = document.createElement("span");
    text.textContent = detail.message;
    toast.appendChild(text);
    if (detail.undo && detail.undo.url) {
      var values = Object.assign({}, detail.undo);
      var url = values.url;
      delete values.url;
      var undo = document.createElement("button");
      undo.type = "button";
      undo.className = "toast-undo";
      undo.textContent = "Undo";
      undo.setAttribute("data-undo", "");
      undo.addEventListener("click", function () {
        box.textContent = "";
        window.htmx.ajax("POST", url, { source: document.body, values: values, swap: "none" });
      });
      toast.appendChild(undo);
    }
    var close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", function () { box.textContent = ""; });
    toast.appendChild(close);
    box.appendChild(toast);
    if (timer) clearTimeout(timer);
    timer = setTimeout(function () { box.textContent = ""; }, SHOWN_MS);
  }

  document.addEventListener("toast", function (event) { show(event.detail); });
  // A form that worked is emptied (the note box), so the next note starts blank.
  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail.elt && event.detail.elt.closest && event.detail.elt.closest("form");
    if (form && event.detail.successful && form.hasAttribute("data-reset-on-success")) {
      form.reset();
    }
  });
  // A refused or invalid action says why, in the toast, instead of nothing happening.
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var type = xhr.getResponseHeader("Content-Type") || "";
    var said = type.indexOf("text/plain") === 0 && xhr.responseText
      ? xhr.responseText : "That did not work (" + xhr.status + ").";
    show({ message: said });
  });
})();
