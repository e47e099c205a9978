// Message bodies: each sandboxed frame as tall as its document, so the page scrolls and the
// frame never does. The frame runs no script (its sandbox has no allow-scripts); ours can
// read it because the sandbox keeps it same-origin (allow-same-origin, our own endpoint).
(function () {
  "use strict";
  function fit(frame) {
    var doc;
    try { doc = frame.contentDocument; } catch (e) { return; }
    if (!doc || !doc.documentElement || !frame.offsetWidth) return;  // folded away: on open
    var borders = frame.offsetHeight - frame.clientHeight;
    frame.style.height = "0px";  // shrink first, so a narrower page can give a shorter frame
    frame.style.height = (doc.documentElement.scrollHeight + borders) + "px";
  }
  function fitAll(root) {
    (root || document).querySelectorAll("iframe.fit").forEach(fit);
  }
  // load does not bubble: catch it on the way down
  document.addEventListener("load", function (event) {
    if (event.target.matches && event.target.matches("iframe.fit")) fit(event.target);
  }, true);
  // an older message unfolded: its frame now has a width to lay out in
  document.addEventListener("toggle", function (event) {
    if (event.target.open) fitAll(event.target);
  }, true);
  document.addEventListener("htmx:afterSettle", function () { fitAll(); });
  // The timeline is redrawn after an action (a note, the history): the frames are kept as
  // they are (hx-preserve) and the messages someone unfolded stay unfolded.
  var unfolded = [];
  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    if (!event.detail.target || event.detail.target.id !== "timeline") return;
    unfolded = Array.from(event.detail.target.querySelectorAll("li.entry-message"))
      .filter(function (li) { return li.querySelector("details[open]"); })
      .map(function (li) { return li.id; });
  });
  document.addEventListener("htmx:oobAfterSwap", function (event) {
    if (!event.detail.target || event.detail.target.id !== "timeline") return;
    unfolded.forEach(function (id) {
      var details = document.querySelector("#" + CSS.escape(id) + " > details");
      if (details) details.open = true;
    });
    unfolded = [];
  });
  var pending = null;
  window.addEventListener("resize", function () {
    if (pending) cancelAnimationFrame(pending);
    pending = requestAnimationFrame(function () { fitAll(); });
  });
  fitAll();  // frames that finished before this script ran
})();
