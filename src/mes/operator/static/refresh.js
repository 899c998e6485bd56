// The queue refreshes itself every data-refresh-seconds (on <main>), so that new orders show up on a
// terminal nobody touches; never while someone is typing or scanning into a field, or the tab is hidden.
(function () {
  var main = document.querySelector("main[data-refresh-seconds]");
  if (!main) return;
  var seconds = parseInt(main.getAttribute("data-refresh-seconds"), 10);
  if (!(seconds > 0)) return;
  setInterval(function () {
    var field = document.activeElement;
    var typing = field && /^(INPUT|TEXTAREA|SELECT)$/.test(field.tagName) && field.value;
    if (document.visibilityState === "visible" && !typing) window.location.reload();
  }, seconds * 1000);
})();
