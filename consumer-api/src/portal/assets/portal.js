// Relay consumer portal: the little script the pages use. Loaded from the portal itself (the
// Content-Security-Policy allows no inline script); every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // A link's landing page posts its token at once (a button does it without script).
  const landing = document.querySelector("form[data-autosubmit]");
  if (landing) {
    landing.submit();
  }

  // Copy buttons: copy the text of the element they name, and say so.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source || !navigator.clipboard) {
        return;
      }
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        const label = button.textContent;
        button.textContent = "Copied";
        setTimeout(() => {
          button.textContent = label;
        }, 1500);
      } catch (_) {
        button.textContent = "Select and copy";
      }
    });
  }

  // "Select all" for the dead-letter checkboxes.
  const all = document.querySelector("input[data-select-all]");
  if (all) {
    all.hidden = false;
    all.parentElement.hidden = false;
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll("input[name=ids]")) {
        box.checked = all.checked;
      }
    });
  }
});
