// The terminal's shortcuts: Alt and a letter clicks the button or follows the link, or focuses the field, marked
// data-key="<letter>" (each shows its keys in a <kbd>). Read by the key's position (KeyC), so that
// a keyboard layout or Option on a Mac that turns the letter into another character changes nothing.
document.addEventListener("keydown", function (event) {
  if (!event.altKey || event.ctrlKey || event.metaKey || event.repeat) return;
  if (!/^Key[A-Z]$/.test(event.code)) return;
  var target = document.querySelector('[data-key="' + event.code.slice(3).toLowerCase() + '"]');
  if (!target) return;
  event.preventDefault();
  if (target.tagName === "BUTTON" || target.tagName === "A") target.click(); else target.focus();
});
