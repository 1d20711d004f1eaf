// fleetforge ui: keeps the page's live part current from the server's
// Server-Sent Events (the server renders, this only swaps the HTML in),
// counts environments' time left down every second, submits filter
// selects when they change, and asks before a delete. No framework and
// no build step: the pages work without it, only not live.
(function () {
  "use strict";

  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  var updates = 0;

  function setStatus(state, text) {
    if (!status) return;
    status.dataset.state = state;
    status.textContent = text;
  }

  // The same format as the server's `countdown`.
  function countdown(s) {
    var days = Math.floor(s / 86400);
    var hours = Math.floor((s % 86400) / 3600);
    var minutes = Math.floor((s % 3600) / 60);
    var secs = s % 60;
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    if (days > 0) return days + "d " + two(hours) + "h " + two(minutes) + "m " + two(secs) + "s";
    if (hours > 0) return hours + "h " + two(minutes) + "m " + two(secs) + "s";
    if (minutes > 0) return minutes + "m " + two(secs) + "s";
    return secs + "s";
  }

  function tick() {
    var now = Date.now();
    var times = document.querySelectorAll("time[data-expires]");
    for (var i = 0; i < times.length; i++) {
      var left = Math.floor((Date.parse(times[i].dataset.expires) - now) / 1000);
      times[i].textContent = left <= 0 ? "expired" : countdown(left);
    }
  }

  // Where the keyboard focus is, so that it can be put back on the same
  // control of the same row after the swap.
  function focusMark() {
    var active = document.activeElement;
    if (!active || !live.contains(active)) return null;
    var row = active.closest("[data-key]");
    if (row) {
      var same = row.querySelectorAll(active.tagName);
      return { key: row.dataset.key, tag: active.tagName, index: Array.prototype.indexOf.call(same, active) };
    }
    if (active.getAttribute("href")) return { href: active.getAttribute("href") };
    return null;
  }

  function refocus(mark) {
    if (!mark) return;
    var found = null;
    if (mark.key) {
      var row = live.querySelector('[data-key="' + CSS.escape(mark.key) + '"]');
      if (row) found = row.querySelectorAll(mark.tag)[mark.index];
    } else {
      found = live.querySelector('[href="' + CSS.escape(mark.href) + '"]');
    }
    if (found) found.focus({ preventScroll: true });
  }

  function swap(html) {
    var mark = focusMark();
    live.innerHTML = html;
    refocus(mark);
    tick();
    updates += 1;
    live.dataset.updates = String(updates);
  }

  function connect() {
    if (!live || !live.dataset.src || !window.EventSource) {
      setStatus("static", "not live: reload to update");
      return;
    }
    var source = new EventSource(live.dataset.src);
    source.addEventListener("open", function () { setStatus("live", "live"); });
    source.addEventListener("live", function (event) { swap(event.data); });
    source.addEventListener("error", function () {
      // EventSource reconnects by itself, saying what it last got.
      setStatus("reconnecting", "reconnecting…");
    });
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.hasAttribute && target.hasAttribute("data-autosubmit") && target.form) {
      target.form.submit();
    }
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  // "/" jumps to the search box, as on many sites.
  document.addEventListener("keydown", function (event) {
    var typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName);
    if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
      var search = document.querySelector("input[type=search]");
      if (search) {
        event.preventDefault();
        search.focus();
      }
    }
  });

  tick();
  setInterval(tick, 1000);
  connect();
})();
