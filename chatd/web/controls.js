// Small reusable pieces of page behaviour, with no knowledge of chat state.

// A small form under a button: the button shows it, Cancel hides it; `handler(form)` answers
// null when done (the form closes) or a message to show under it.
export function inlineForm(form, button, handler) {
  const error = form.querySelector(".error");
  button.addEventListener("click", () => {
    form.hidden = !form.hidden;
    error.textContent = "";
    if (!form.hidden) form.querySelector("input").focus();
  });
  form.querySelector(".cancel").addEventListener("click", () => {
    form.hidden = true;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const problem = await handler(form);
    if (problem) error.textContent = problem;
    else form.hidden = true;
  });
}

// Files dragged onto `pane` show `hint` and, when dropped, go to `onFiles(files)`. Drags of
// anything else (text, links) are left alone.
export function fileDropTarget(pane, hint, onFiles) {
  let depth = 0; // dragenter/dragleave fire for every child crossed
  const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  pane.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth += 1;
    hint.hidden = false;
  });
  pane.addEventListener("dragover", (event) => {
    if (carriesFiles(event)) event.preventDefault();
  });
  pane.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) hint.hidden = true;
  });
  pane.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    hint.hidden = true;
    const files = [...(event.dataTransfer?.files || [])];
    if (files.length) onFiles(files);
  });
}
