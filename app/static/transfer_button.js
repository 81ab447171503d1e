// "Transfer to top-k" on a ranking: submit a transfer batch from this ranking, then show its page.
(function () {
  "use strict";
  var button = document.getElementById("transfer-button");
  if (!button) { return; }
  var error = document.getElementById("transfer-error");
  function headers() {
    var key = window.sessionStorage.getItem("taskrank-api-key");
    var h = { "Content-Type": "application/json" };
    if (key) { h.Authorization = "Bearer " + key; }
    return h;
  }
  button.addEventListener("click", function () {
    // more than 3 sources: say what it costs (the learned ranking's estimate, when there is one) and ask first
    var top = parseInt(button.dataset.top, 10);
    if (top > 3) {
      var minutes = button.dataset.minutes ? " (about " + Math.round(parseFloat(button.dataset.minutes)) +
        " minutes of training on this machine)" : "";
      if (!window.confirm("Start " + top + " transfers" + minutes + "?")) { return; }
    }
    button.disabled = true;
    error.hidden = true;
    var body = {
      target_dataset_id: button.dataset.dataset,
      from_ranking: { ranking_id: button.dataset.ranking, top_k: parseInt(button.dataset.top, 10) }
    };
    fetch("/transfers", { method: "POST", headers: headers(), body: JSON.stringify(body) })
      .then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      })
      .then(function (result) {
        if (!result.ok) {
          var problem = result.data || {};  // RFC 9457 problem details
          throw new Error(problem.detail || problem.title || "the transfer could not be started");
        }
        window.location.href = "/transfers/" + result.data.id + "/view";
      })
      .catch(function (err) {
        error.textContent = String(err.message || err);
        error.hidden = false;
        button.disabled = false;
      });
  });
}());
