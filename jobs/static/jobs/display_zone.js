// The header's "Times in" list (templates/admin/base_site.html): picking a zone submits its form. A file, not an
// onchange attribute, so that the Content-Security-Policy allows no inline script.
document.addEventListener("DOMContentLoaded", function () {
  var zone = document.getElementById("display-zone");
  if (zone) {
    zone.addEventListener("change", function () { zone.form.submit(); });
  }
});
