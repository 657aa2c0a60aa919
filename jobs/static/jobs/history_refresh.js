// The history's refresh (templates/admin/jobs/occurrence/change_list.html; htmx polls #history-results every 5 s).
// Here, not in hx-trigger's filter or hx-on: htmx evaluates those as code, which the Content-Security-Policy refuses.
// A poll is skipped while a row is selected for an action; an answer without the table (the login page, once the
// session expired) reloads the page instead of being swapped in.
document.addEventListener("htmx:beforeRequest", function (event) {
  if (event.target.id === "history-results" && document.querySelector("#result_list input.action-select:checked")) {
    event.preventDefault();
  }
});
document.addEventListener("htmx:beforeSwap", function (event) {
  if (event.target.id === "history-results" && !event.detail.xhr.responseText.includes("history-results")) {
    event.detail.shouldSwap = false;
    window.location.reload();
  }
});
