// The portal's only script (served from /portal/assets/, allowed by the CSP's script-src 'self'):
// copy buttons. A button with data-copy="ID" copies the text of the element ID. Buttons start
// hidden, so without JavaScript the secret is still shown, just without the button.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const target = document.getElementById(button.dataset.copy);
    if (!target) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(target.textContent);
        button.textContent = "Copied";
      } catch {
        // No clipboard access (an insecure origin, a denied permission): select the text so
        // Ctrl+C copies it.
        const range = document.createRange();
        range.selectNodeContents(target);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  }
});
