// "Schedule a run" (templates/admin/django_celery_beat/periodictask/schedule_run_form.html): the payload is checked
// as JSON while it is typed; the server checks it again (jobs.web.forms.ScheduleRunForm).
document.addEventListener("DOMContentLoaded", function () {
  var box = document.getElementById("id_payload"), said = document.getElementById("payload-check");
  if (!box || !said) { return; }
  function check() {
    var text = box.value.trim();
    if (!text) { said.textContent = "empty: no payload"; said.className = "payload-check"; return; }
    try {
      var value = JSON.parse(text);
      var object = value !== null && typeof value === "object" && !Array.isArray(value);
      said.textContent = object ? "valid JSON object" : "JSON, but not an object ({...})";
      said.className = "payload-check " + (object ? "payload-ok" : "payload-bad");
    } catch (error) {
      said.textContent = error.message;
      said.className = "payload-check payload-bad";
    }
  }
  box.addEventListener("input", check);
  check();
});
