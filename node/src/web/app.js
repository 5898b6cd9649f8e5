// buildmesh console: keeps an open page up to date. Every page is complete without this; with
// it, a change announced on /events (or, on pages about liveness, a timer) reloads the page's
// <main> in place, at most about twice a second.
(function () {
  "use strict";
  var body = document.body;
  if (!window.EventSource || !window.fetch || body.dataset.live !== "1") return;
  var dot = document.getElementById("live");
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    setTimeout(function () {
      fetch(location.href, { headers: { "Accept": "text/html" }, cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (text) {
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.querySelector("main"), old = document.querySelector("main");
          if (fresh && old) old.replaceWith(fresh);
          document.title = doc.title;
          if (doc.body.dataset.live !== "1") { events.close(); if (dot) dot.className = "live"; }
        })
        .catch(function () {})
        .then(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    }, 150);
  }
  var events = new EventSource("/events");
  // A stream that opens again (the node restarted, the network came back) may have missed
  // changes the node no longer replays: the page reads everything again.
  var opened = false;
  events.onopen = function () {
    if (dot) dot.className = "live on";
    if (opened) refresh();
    opened = true;
  };
  events.onerror = function () { if (dot) dot.className = "live"; };
  ["build", "mesh", "reset"].forEach(function (name) { events.addEventListener(name, refresh); });
  var every = parseInt(body.dataset.every || "0", 10);
  if (every > 0) setInterval(refresh, every);
})();
