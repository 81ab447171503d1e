// Follows one job: polls GET /jobs/{id} every 500 ms, updates the bar, ETA and stage in place,
// opens the ranking when a rank job succeeds (unless the URL has ?stay), shows the error on failure.
(function () {
  "use strict";
  var card = document.getElementById("job");
  if (!card) return;
  var jobId = card.dataset.jobId;
  var rankingId = card.dataset.rankingId;
  var stay = new URLSearchParams(window.location.search).has("stay");
  var TERMINAL = { succeeded: true, failed: true, cancelled: true };
  var el = function (id) { return document.getElementById(id); };
  var failures = 0;

  function headers() {
    var key = window.sessionStorage.getItem("taskrank-api-key");
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    var total = Math.round(seconds);
    var minutes = Math.floor(total / 60), secs = total % 60;
    if (minutes < 60) return minutes + " min " + String(secs).padStart(2, "0") + " s";
    return Math.floor(minutes / 60) + " h " + String(minutes % 60).padStart(2, "0") + " min";
  }

  function setState(state) {
    var badge = el("job-state");
    badge.textContent = state;
    badge.className = "state state-" + state;
    el("job-bar").className = "progress-fill state-" + state;
    card.dataset.state = state;
  }

  function render(job) {
    setState(job.state);
    el("job-stage").textContent = job.stage && job.stage !== job.state ? job.stage : "";
    var pct = Math.max(0, Math.min(100, job.progress || 0));
    el("job-bar").style.width = pct + "%";
    el("job-progress").setAttribute("aria-valuenow", String(pct));
    el("job-percent").textContent = pct.toFixed(1) + "%";
    el("job-done").textContent = job.done + " / " + job.total;
    el("job-eta").textContent = TERMINAL[job.state] ? "–" : duration(job.eta_seconds);
    el("job-duration").textContent = duration(job.duration_seconds);
    var error = el("job-error");
    if ((job.state === "failed" || job.state === "cancelled") && job.error) {
      el("job-error-text").textContent = job.error;
      error.querySelector("strong").textContent =
        job.state === "cancelled" ? "The job was cancelled:" : "The job failed:";
      error.classList.remove("hidden");
    } else {
      error.classList.add("hidden");
    }
    var found = (job.result && job.result.ranking_id) || rankingId;
    if (job.state === "succeeded") {
      var link = el("ranking-link") || el("library-link");
      if (link) link.classList.remove("hidden");
      if (found && !stay) {
        el("job-poll-note").textContent = "Done: opening the ranking…";
        window.location.replace("/rankings/" + encodeURIComponent(found) + "/view");
        return true;
      }
    }
    if (TERMINAL[job.state]) el("job-poll-note").textContent = "The job has finished.";
    return !!TERMINAL[job.state];
  }

  function poll() {
    fetch("/jobs/" + encodeURIComponent(jobId), { headers: headers(), cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (job) {
        failures = 0;
        if (!render(job)) window.setTimeout(poll, 500);
      })
      .catch(function (err) {
        failures += 1;
        el("job-poll-note").textContent = "Cannot reach the service (" + err.message + "); retrying…";
        window.setTimeout(poll, Math.min(5000, 500 * Math.pow(2, failures)));
      });
  }

  if (TERMINAL[card.dataset.state] && (stay || card.dataset.state !== "succeeded" || !rankingId)) {
    el("job-poll-note").textContent = "The job has finished.";
    if (card.dataset.state === "succeeded" && el("ranking-link")) el("ranking-link").classList.remove("hidden");
    return;
  }
  poll();
})();
