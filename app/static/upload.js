// The upload form: checks the file (or pasted rows) with POST /datasets/validate, which stores nothing,
// shows what the loader found (or where the file is wrong), offers the file's columns for the mapping;
// on submit it uploads with POST /datasets, posts /rankings and opens the job page (or the ranking
// itself when the answer is stored).
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("upload-config").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var form = $("upload-form");
  var fileInput = $("file");
  var paste = $("paste");
  var typeSelect = $("task-type");
  var autoOption = $("task-type-auto");
  var startButton = $("start");
  var status = $("start-status");
  var REQUIRED = { text: true, label: true, tokens: true, tags: true, question: true, context: true, answers: true };
  var FIELD_LABELS = { text: "Text", text_pair: "Text pair", label: "Label", tokens: "Tokens", tags: "Tags",
                       question: "Question", context: "Context", answers: "Answers" };
  var TYPE_LABELS = { classification: "classification", regression: "regression",
                      question_answering: "question answering", sequence_labeling: "sequence labeling" };

  var state = { uploaded: null, checked: null, header: null, busy: false, detected: null, chosen: {} };

  function headers() {
    var keyInput = $("api-key");
    var key = keyInput ? keyInput.value.trim() : "";
    if (keyInput) {
      if (key) window.sessionStorage.setItem("taskrank-api-key", key);
      else window.sessionStorage.removeItem("taskrank-api-key");
    }
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // ---- the data source: a chosen file, else the pasted rows ------------------------------------
  function pastedSource() {
    var text = paste.value;
    if (!text.trim()) return null;
    var first = text.trim().charAt(0);
    var firstLine = text.trim().split(/\r?\n/, 1)[0];
    var ext = first === "{" ? "jsonl" : first === "[" ? "json" : firstLine.indexOf("\t") >= 0 ? "tsv" : "csv";
    return { blob: new Blob([text], { type: "text/plain" }), filename: "pasted." + ext, key: "paste:" + text };
  }

  function currentSource() {
    var file = fileInput.files && fileInput.files[0];
    if (file) {
      return { blob: file, filename: file.name, key: ["file", file.name, file.size, file.lastModified].join(":") };
    }
    return pastedSource();
  }

  // ---- columns: read the header in the browser, prefill with the loader's name rules -------------
  function parseDelimited(line, delimiter) {
    if (delimiter === "\t") return line.split("\t");
    var out = [], cell = "", quoted = false;
    for (var i = 0; i < line.length; i++) {
      var ch = line.charAt(i);
      if (quoted) {
        if (ch === '"' && line.charAt(i + 1) === '"') { cell += '"'; i++; }
        else if (ch === '"') quoted = false;
        else cell += ch;
      } else if (ch === '"') quoted = true;
      else if (ch === delimiter) { out.push(cell); cell = ""; }
      else cell += ch;
    }
    out.push(cell);
    return out;
  }

  // The first non-blank line of a file as text, or null when that line is not UTF-8 (garbage shows no
  // mojibake; the loader's check says where the bytes are wrong). Only the line itself is decoded: a bad
  // byte further down does not hide the header, and a newline byte never sits inside a UTF-8 character.
  function firstLine(blob, size) {
    return blob.slice(0, size).arrayBuffer().then(function (buffer) {
      var bytes = new Uint8Array(buffer), start = 0;
      while (start < bytes.length) {
        var end = bytes.indexOf(10, start);
        if (end < 0) end = bytes.length;
        var text;
        try {
          text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(start, end),
                                                                  { stream: end === bytes.length && blob.size > size });
        } catch (e) { return null; }
        if (text.trim()) return text.replace(/^\ufeff/, "").replace(/\r$/, "");
        start = end + 1;
      }
      return "";
    });
  }

  function printable(name) {  // control characters in a column name as \xNN, as the loader shows them
    return name.replace(/[\u0000-\u001f\u007f-\u009f]/g, function (ch) {
      return "\\x" + ("0" + ch.charCodeAt(0).toString(16)).slice(-2);
    });
  }

  function readHeader(source) {
    var ext = (source.filename.split(".").pop() || "").toLowerCase();
    var blob = source.blob;
    if (ext === "csv" || ext === "tsv" || ext === "tab") {
      return firstLine(blob, 65536).then(function (line) {
        if (line === null) return { format: ext, columns: null, binary: true };
        var cols = parseDelimited(line, ext === "csv" ? "," : "\t").map(function (c) { return c.trim(); });
        return { format: ext, columns: cols.filter(function (c) { return c; }) };
      });
    }
    if (ext === "jsonl" || ext === "ndjson") {
      return firstLine(blob, 1048576).then(function (line) {
        if (line === null) return { format: ext, columns: null, binary: true };
        try {
          var row = JSON.parse(line);
          return { format: ext, columns: row && typeof row === "object" && !Array.isArray(row) ? Object.keys(row) : null };
        } catch (e) { return { format: ext, columns: null }; }
      });
    }
    if (ext === "json" && blob.size < 5 * 1048576) {
      return blob.text().then(function (text) {
        try {
          var value = JSON.parse(text);
          if (Array.isArray(value) && value.length && typeof value[0] === "object" && value[0] !== null) {
            return { format: ext, columns: Object.keys(value[0]) };
          }
        } catch (e) { /* the loader reports it */ }
        return { format: ext, columns: null };
      });
    }
    return Promise.resolve({ format: ext, columns: null });
  }

  function defaults(columns, fields) {
    var byLower = {};
    columns.forEach(function (c) { if (!(c.toLowerCase() in byLower)) byLower[c.toLowerCase()] = c; });
    var chosen = {}, taken = {};
    fields.forEach(function (field) {
      var aliases = config.aliases[field] || [field];
      chosen[field] = "";
      for (var i = 0; i < aliases.length; i++) {
        var col = byLower[aliases[i]];
        if (col && !taken[col]) { chosen[field] = col; taken[col] = true; break; }
      }
    });
    if (chosen.text && chosen.text.toLowerCase() === "question" && "text_pair" in chosen && !chosen.text_pair) {
      chosen.text_pair = byLower.sentence || "";  // QNLI: the question is the text, the sentence the pair
    }
    return chosen;
  }

  function mappingType() {
    return typeSelect.value || state.detected || "classification";
  }

  function renderMapping() {
    var rows = $("column-map-rows");
    var note = $("column-map-note");
    rows.textContent = "";
    var header = state.header;
    if (!header) return;
    if (!header.columns || !header.columns.length) {
      note.textContent = header.binary
        ? "The file is not UTF-8 text, so no columns can be read from it."
        : header.format === "json"
        ? "A JSON file: SQuAD files and row lists are read by their own field names."
        : "No column header in this format (CoNLL: one token and its tag per line).";
      return;
    }
    var fields = config.fields[mappingType()] || config.fields.classification;
    var found = defaults(header.columns, fields);
    note.textContent = "Columns found in the file: " + header.columns.map(printable).join(", ") +
      ". The mapping below is what the loader will use; change it if it guessed wrong.";
    fields.forEach(function (field) {
      var id = "map-" + field;
      var wrap = document.createElement("label");
      wrap.className = "map-row";
      wrap.htmlFor = id;
      var name = document.createElement("span");
      name.className = "map-field";
      name.textContent = FIELD_LABELS[field] || field;
      var select = document.createElement("select");
      select.id = id;
      select.dataset.field = field;
      select.dataset.auto = found[field] || "";
      var none = document.createElement("option");
      none.value = "";
      none.textContent = REQUIRED[field] ? "— not found —" : "— none —";
      select.appendChild(none);
      header.columns.forEach(function (col) {
        var option = document.createElement("option");
        option.value = col;
        option.textContent = printable(col);
        select.appendChild(option);
      });
      select.value = field in state.chosen ? state.chosen[field] : (found[field] || "");
      select.addEventListener("change", function () { state.chosen[field] = select.value; recheck(); });
      wrap.appendChild(name);
      wrap.appendChild(select);
      rows.appendChild(wrap);
    });
  }

  function columnMap() {
    var map = {}, any = false;
    document.querySelectorAll("#column-map-rows select").forEach(function (select) {
      if (select.value && select.value !== select.dataset.auto) { map[select.dataset.field] = select.value; any = true; }
    });
    return any ? map : null;
  }

  function optionsKey() {
    return JSON.stringify([typeSelect.value, columnMap(), $("name").value.trim()]);
  }

  // ---- showing what the loader said ---------------------------------------------------------------
  function clearMessages() {
    $("upload-error").classList.add("hidden");
    document.querySelectorAll(".map-row.invalid").forEach(function (row) { row.classList.remove("invalid"); });
  }

  // `detail`: the service's problem details (RFC 9457: detail, title, file, line, column, field), or a
  // message of the page's own ({message, field}), or a string
  function showError(detail) {
    if (typeof detail === "string" || !detail) detail = { message: detail || "the service did not answer" };
    $("dataset-summary").classList.add("hidden");
    $("upload-error-message").textContent = detail.message ||
      (typeof detail.detail === "string" ? detail.detail : "") || detail.title || "invalid dataset";
    var where = $("upload-error-where");
    where.textContent = "";
    ["file", "line", "column", "field"].forEach(function (key) {
      if (detail[key] === null || detail[key] === undefined || detail[key] === "") return;
      var div = document.createElement("div");
      var dt = document.createElement("dt");
      dt.textContent = key.charAt(0).toUpperCase() + key.slice(1);
      var dd = document.createElement("dd");
      dd.textContent = String(detail[key]);
      dd.id = "upload-error-" + key;
      div.appendChild(dt);
      div.appendChild(dd);
      where.appendChild(div);
    });
    if (detail.field) {
      var select = $("map-" + detail.field);
      if (select) select.parentNode.classList.add("invalid");
    }
    $("upload-error").classList.remove("hidden");
    if ($("upload-error").scrollIntoView) $("upload-error").scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function showSummary(dataset) {
    clearMessages();
    state.detected = dataset.task_type;
    autoOption.textContent = "Auto-detect (found: " + TYPE_LABELS[dataset.task_type] + ")";
    $("summary-name").textContent = dataset.name;
    $("summary-file").textContent = dataset.filename || "–";
    $("summary-type").textContent = TYPE_LABELS[dataset.task_type] || dataset.task_type;
    $("summary-rows").textContent = dataset.rows.toLocaleString("en");
    var d = dataset.description || {};
    $("summary-pair").textContent = d.pair ? "yes" : "no";
    $("summary-length").textContent = d.length_words ? Math.round(d.length_words.p50) + " words" : "–";
    var list = $("summary-labels");
    list.textContent = "";
    var labels = Object.keys(dataset.labels || {});
    var title = $("summary-labels-title");
    if (dataset.task_type === "regression" && d.label_stats) {
      title.textContent = "Scores";
      var li = document.createElement("li");
      li.textContent = d.label_stats.min.toFixed(2) + " to " + d.label_stats.max.toFixed(2) +
        ", mean " + d.label_stats.mean.toFixed(2);
      list.appendChild(li);
    } else {
      title.textContent = dataset.task_type === "sequence_labeling" ? "Tags" : "Labels";
      labels.slice(0, 24).forEach(function (label) {
        var li = document.createElement("li");
        li.textContent = label + " ";
        var count = document.createElement("span");
        count.className = "count";
        count.textContent = dataset.labels[label].toLocaleString("en");
        li.appendChild(count);
        list.appendChild(li);
      });
      if (labels.length > 24) {
        var more = document.createElement("li");
        more.textContent = "+" + (labels.length - 24) + " more";
        list.appendChild(more);
      }
      if (!labels.length) title.textContent = "";
    }
    $("dataset-summary").classList.remove("hidden");
    renderMapping();
  }

  function say(text) { status.textContent = text; }

  function setBusy(busy) {
    state.busy = busy;
    startButton.disabled = busy;
    form.classList.toggle("busy", busy);
  }

  function responseJson(response) {
    return response.text().then(function (text) {
      var body = null;
      try { body = text ? JSON.parse(text) : null; } catch (e) { body = { detail: text }; }
      return { status: response.status, ok: response.ok, body: body };
    });
  }

  // ---- check (nothing stored), then on submit upload and rank ------------------------------------------
  // upload(false) asks POST /datasets/validate what the loader finds; upload(true) stores with POST /datasets
  // (the same content, name and owner again: the service answers 200 with the record it made before).
  function upload(keep) {
    var source = currentSource();
    if (!source) {
      showError({ message: "Choose a file or paste some rows first." });
      return Promise.resolve(null);
    }
    if (source.blob.size > config.maxUploadBytes) {
      showError({ message: "The file is larger than this service accepts (" +
        (config.maxUploadBytes / 1048576).toFixed(0) + " MB).", file: source.filename });
      return Promise.resolve(null);
    }
    var key = source.key + "|" + optionsKey();
    var cached = keep ? state.uploaded : state.checked;
    if (cached && cached.key === key) return Promise.resolve(cached.dataset);
    var body = new FormData();
    body.append("file", source.blob, source.filename);
    var name = $("name").value.trim();
    if (name) body.append("name", name);
    if (typeSelect.value) body.append("task_type", typeSelect.value);
    var map = columnMap();
    if (map) body.append("column_map", JSON.stringify(map));
    say(keep ? "Uploading the dataset…" : "Checking the dataset…");
    return fetch(keep ? "/datasets" : "/datasets/validate", { method: "POST", body: body, headers: headers() })
      .then(responseJson)
      .then(function (answer) {
        if (answer.ok) {
          var entry = { key: key, dataset: answer.body };
          if (keep) state.uploaded = entry; else state.checked = entry;
          showSummary(answer.body);
          say("");
          return answer.body;
        }
        if (keep) state.uploaded = null; else state.checked = null;
        showError(answer.body && answer.body.detail ? answer.body : "HTTP " + answer.status);
        say("");
        return null;
      });
  }

  function newSource() {
    state.uploaded = null;
    state.checked = null;
    state.detected = null;
    state.chosen = {};
    autoOption.textContent = "Auto-detect";
    $("dataset-summary").classList.add("hidden");
    clearMessages();
    var source = currentSource();
    if (!source) { state.header = null; renderMapping(); return Promise.resolve(null); }
    return readHeader(source).then(function (header) {
      state.header = header;
      renderMapping();
    });
  }

  function check() {
    if (state.busy) return;
    setBusy(true);
    newSource()
      .then(function () { return upload(false); })
      .catch(function (err) { showError({ message: "Cannot reach the service: " + err.message }); say(""); })
      .then(function () { setBusy(false); });
  }

  function recheck() {  // a changed task type or mapping: validate again at once
    if (state.busy || !currentSource()) return;
    setBusy(true);
    upload(false)
      .catch(function (err) { showError({ message: "Cannot reach the service: " + err.message }); say(""); })
      .then(function () { setBusy(false); });
  }

  function start(event) {
    event.preventDefault();
    if (state.busy) return;
    var topK = parseInt($("top-k").value, 10);
    if (!(topK >= 1 && topK <= 1000)) {
      showError({ message: "Top k must be a whole number from 1 to 1000.", field: "top_k" });
      return;
    }
    setBusy(true);
    var ready = state.header || !currentSource() ? Promise.resolve() : newSource();
    ready
      .then(function () { return upload(true); })
      .then(function (dataset) {
        if (!dataset) return null;
        var picked = form.querySelector("input[name=method]:checked");
        say("Starting the ranking…");
        var request = { dataset_id: dataset.id, top_k: topK, all_class: $("all-class").checked };
        // the default is left to the server: it ranks with the incumbent where the default cannot rank the target
        if (!picked.dataset.default) request.method = picked.value;
        var hdrs = headers();
        hdrs["Content-Type"] = "application/json";
        return fetch("/rankings", { method: "POST", headers: hdrs, body: JSON.stringify(request) })
          .then(responseJson)
          .then(function (answer) {
            if (!answer.ok) {
              showError(answer.body && answer.body.detail ? answer.body : "HTTP " + answer.status);
              say("");
              return null;
            }
            var ranking = answer.body;
            say(ranking.cached ? "Stored answer found: opening it…" : "Queued: following the job…");
            window.location.assign(ranking.state === "succeeded" && ranking.sources
              ? "/rankings/" + encodeURIComponent(ranking.id) + "/view"
              : "/jobs/" + encodeURIComponent(ranking.job_id) + "/view");
            return ranking;
          });
      })
      .catch(function (err) { showError({ message: "Cannot reach the service: " + err.message }); say(""); })
      .then(function (done) { if (!done) setBusy(false); });
  }

  fileInput.addEventListener("change", function () {
    var file = fileInput.files && fileInput.files[0];
    $("file-chosen").classList.toggle("hidden", !file);
    $("file-chosen-name").textContent = file ? file.name + " · " + (file.size / 1024).toFixed(1) + " KB" : "";
    check();
  });
  $("file-clear").addEventListener("click", function () {
    fileInput.value = "";
    $("file-chosen").classList.add("hidden");
    newSource();
  });
  $("check-paste").addEventListener("click", function () {
    if (fileInput.files && fileInput.files[0]) {
      fileInput.value = "";
      $("file-chosen").classList.add("hidden");
    }
    check();
  });
  paste.addEventListener("change", function () { if (!(fileInput.files && fileInput.files[0])) newSource(); });
  typeSelect.addEventListener("change", function () { state.chosen = {}; renderMapping(); recheck(); });
  form.addEventListener("submit", start);
  var saved = window.sessionStorage.getItem("taskrank-api-key");
  if (saved && $("api-key")) $("api-key").value = saved;
})();
