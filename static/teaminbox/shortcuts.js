// The keyboard map (as in Gmail and Front), for the conversation list and a conversation:
//   j/k next/previous, o or Enter open, u back to the list, x select, e close, s flag,
//   # delete, z undo, r reply, a reply all, f forward, shift+i read, shift+u unread, ? help.
// A page declares what a key does with data-shortcut="<key>" on a button or link; on the
// list, the action keys act on the selection (or the row under the cursor) through the bulk
// form. Keys typed into a field are the field's.
(function () {
  "use strict";
  var HELP = [
    ["j / k", "Next / previous conversation"],
    ["o or Enter", "Open the conversation"],
    ["u", "Back to the list"],
    ["x", "Select the conversation"],
    ["e", "Close"],
    ["s", "Flag / unflag"],
    ["#", "Delete"],
    ["z", "Undo the last action"],
    ["r", "Reply"],
    ["a", "Reply all"],
    ["f", "Forward"],
    ["shift + i", "Mark read"],
    ["shift + u", "Mark unread"],
    ["?", "Show this help"],
  ];
  // list keys -> the bulk form's action button
  var BULK = { e: "status:closed", "#": "delete", I: "read", U: "unread" };
  var REPLY_KINDS = { r: "reply", a: "reply_all", f: "forward" };

  function typing(el) {
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }
  function rows() {
    return Array.from(document.querySelectorAll("[data-conversation-row], tr.message-row"));
  }
  function cursorRow() {
    return document.querySelector("[data-conversation-row].cursor, tr.message-row.cursor");
  }
  function move(delta) {
    var all = rows();
    if (!all.length) return;
    var i = all.findIndex(function (r) { return r.classList.contains("cursor"); });
    var next = Math.max(0, Math.min(all.length - 1, i + delta));
    if (i === -1 && delta < 0) next = 0;
    if (i >= 0) all[i].classList.remove("cursor");
    all[next].classList.add("cursor");
    all[next].setAttribute("aria-current", "true");
    if (i >= 0 && i !== next) all[i].removeAttribute("aria-current");
    all[next].scrollIntoView({ block: "nearest" });
  }
  function open(row) {
    if (!row) return false;
    var url = row.getAttribute("data-url");
    var link = row.querySelector("a");
    if (url) { window.location.assign(url); return true; }
    if (link) { link.click(); return true; }
    return false;
  }
  function declared(key) {
    var found = document.querySelectorAll('[data-shortcut="' + CSS.escape(key) + '"]');
    for (var i = 0; i < found.length; i++) {
      if (!found[i].disabled) return found[i];
    }
    return null;
  }
  function pickCursorIfNoneSelected() {
    if (document.querySelector('input[name="c"]:checked')) return true;
    var row = cursorRow();
    var box = row && row.querySelector('input[name="c"]');
    if (!box) return false;
    box.click();
    return true;
  }
  function bulk(key) {
    var value = BULK[key];
    var form = document.getElementById("bulk-form");
    if (!value || !form || !rows().length) return false;
    var button = form.querySelector('button[name="action"][value="' + value + '"]');
    if (!button || !pickCursorIfNoneSelected()) return false;
    button.click();
    return true;
  }
  function reply(key) {
    var kind = REPLY_KINDS[key];
    if (!kind) return false;
    var links = document.querySelectorAll(".reply-actions a[href]");
    for (var i = 0; i < links.length; i++) {
      if (new URL(links[i].href).searchParams.get("kind") === kind) { links[i].click(); return true; }
    }
    return false;
  }
  function undo() {
    var button = document.querySelector("[data-undo]") || declared("z");
    if (button) { button.click(); return true; }
    return false;
  }
  function back() {
    var link = document.querySelector("a[data-back]") || document.querySelector("a.crumb");
    if (link) { link.click(); return true; }
    return false;
  }
  function help() {
    var dialog = document.getElementById("shortcut-help");
    if (!dialog) {
      dialog = document.createElement("dialog");
      dialog.id = "shortcut-help";
      dialog.className = "shortcut-help";
      dialog.setAttribute("aria-labelledby", "shortcut-help-title");
      var title = document.createElement("h2");
      title.id = "shortcut-help-title";
      title.textContent = "Keyboard shortcuts";
      dialog.appendChild(title);
      var list = document.createElement("dl");
      HELP.forEach(function (pair) {
        var dt = document.createElement("dt");
        var kbd = document.createElement("kbd");
        kbd.textContent = pair[0];
        dt.appendChild(kbd);
        var dd = document.createElement("dd");
        dd.textContent = pair[1];
        list.appendChild(dt);
        list.appendChild(dd);
      });
      dialog.appendChild(list);
      var form = document.createElement("form");
      form.method = "dialog";
      var close = document.createElement("button");
      close.textContent = "Close";
      form.appendChild(close);
      dialog.appendChild(form);
      document.body.appendChild(dialog);
    }
    if (dialog.open) dialog.close(); else dialog.showModal();
    return true;
  }

  // The list is redrawn after a bulk action: the cursor stays on the same conversation.
  var cursorId = null;
  document.addEventListener("htmx:beforeSwap", function () {
    var row = cursorRow();
    cursorId = row ? row.id : null;
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!cursorId || cursorRow()) return;
    var row = document.getElementById(cursorId);
    if (row) row.classList.add("cursor");
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    if (document.querySelector("dialog[open]") && event.key !== "?") return;  // the dialog's
    var key = event.key;
    var handled = false;
    if (key === "?") { handled = help(); }
    else if (key === "z") { handled = undo(); }
    else if (key === "Enter") {
      // Enter on a focused link, button or summary does what it always does.
      if (event.target !== document.body && !event.target.matches("[data-conversation-row]")) return;
      handled = open(cursorRow());
    } else {
      var button = declared(key);
      if (button) { button.click(); handled = true; }
      else if (key === "j") { move(1); handled = true; }
      else if (key === "k") { move(-1); handled = true; }
      else if (key === "o") { handled = open(cursorRow()); }
      else if (key === "u" || key === "Escape") { handled = back(); }
      else if (key === "x") { handled = toggleCursor(); }
      else if (BULK[key]) { handled = bulk(key); }
      else if (REPLY_KINDS[key]) { handled = reply(key); }
    }
    if (handled) event.preventDefault();
  });

  function toggleCursor() {
    var row = cursorRow();
    var box = row && row.querySelector('input[name="c"]');
    if (!box) return false;
    box.click();  // a click, so the list's own selection script hears it
    return true;
  }
})();
