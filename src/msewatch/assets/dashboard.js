/* msewatch dashboard: draws the charts and tables of a view document (from /api/views/{view}
   or inlined in a report) with the vendored Vega and Vega-Lite. No network access of its own
   beyond the view request of the server pages. */
(function () {
  "use strict";

  function esc(text) {
    return String(text === null || text === undefined ? "" : text)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  async function drawChart(el, chart) {
    if (!chart.n) {
      el.innerHTML = '<p class="empty">No data in this range.</p>';
      el.dataset.rendered = "empty";
      return;
    }
    const compiled = vegaLite.compile(chart.spec).spec;
    const view = new vega.View(vega.parse(compiled), {renderer: "svg", container: el, hover: true, logLevel: vega.Warn});
    await view.runAsync();
    el.dataset.rendered = "drawn";
    el.dataset.points = String(chart.n);
  }

  function table(t) {
    const head = t.columns.map(function (c) { return "<th>" + esc(c) + "</th>"; }).join("");
    const rows = t.rows.length ? t.rows.map(function (r) {
      return "<tr>" + r.map(function (c) { return "<td>" + esc(c) + "</td>"; }).join("") + "</tr>";
    }).join("") : '<tr><td colspan="' + t.columns.length + '" class="empty">None.</td></tr>';
    return '<section class="card wide" id="table-' + esc(t.id) + '"><h3>' + esc(t.title) + "</h3>" +
      '<div class="scroll"><table><thead><tr>' + head + "</tr></thead><tbody>" + rows + "</tbody></table></div>" +
      (t.note ? '<p class="note">' + esc(t.note) + "</p>" : "") + "</section>";
  }

  async function renderView(container, doc) {
    container.innerHTML = "";
    const grid = document.createElement("div");
    grid.className = "grid";
    container.appendChild(grid);
    const jobs = [];
    doc.charts.forEach(function (chart) {
      const card = document.createElement("section");
      card.className = "card";
      card.innerHTML = "<h3>" + esc(chart.title) + "</h3>" + '<div class="chart" id="chart-' + esc(chart.id) +
        '" data-chart="' + esc(chart.id) + '"></div>' + (chart.note ? '<p class="note">' + esc(chart.note) + "</p>" : "");
      grid.appendChild(card);
      jobs.push(drawChart(card.querySelector(".chart"), chart));
    });
    doc.tables.forEach(function (t) { grid.insertAdjacentHTML("beforeend", table(t)); });
    await Promise.all(jobs);
    container.dataset.ready = "1";
  }

  function fillFilters(form, doc) {
    function options(select, values, current, blank) {
      select.innerHTML = (blank ? '<option value="">' + esc(blank) + "</option>" : "") + values.map(function (v) {
        return '<option value="' + esc(v) + '"' + (v === current ? " selected" : "") + ">" + esc(v) + "</option>";
      }).join("");
    }
    const f = doc.filters;
    options(form.elements.model, doc.models, doc.model, null);
    options(form.elements.version, doc.versions, f.version, "all versions");
    options(form.elements.cohort, doc.segments, doc.cohort, null);
    form.elements.cohort_value.value = f.cohort_value || "";
    form.elements.since.value = f.since || "";
    form.elements.until.value = f.until || "";
    document.getElementById("data-until").textContent = doc.data_until ? "Data up to " + doc.data_until : "";
  }

  /* server pages: fetch the view's data with the read token (kept in this tab's sessionStorage) */
  async function loadPage(view) {
    const status = document.getElementById("status");
    const container = document.getElementById("view");
    const form = document.getElementById("filters");
    const tokenBox = document.getElementById("token");
    tokenBox.value = sessionStorage.getItem("msewatch-token") || "";
    tokenBox.addEventListener("change", function () {
      sessionStorage.setItem("msewatch-token", tokenBox.value.trim());
      location.reload();
    });
    const headers = {};
    const token = sessionStorage.getItem("msewatch-token");
    if (token) headers.Authorization = "Bearer " + token;
    status.textContent = "Loading…";
    const started = performance.now();
    const answer = await fetch("../api/views/" + view + location.search, {headers: headers});
    const doc = await answer.json();
    if (!answer.ok) {
      status.textContent = (answer.status === 401 || answer.status === 403 ? "Enter a read token above. " : "") + (doc.error || answer.statusText);
      status.className = "error";
      container.dataset.ready = "error";
      return;
    }
    fillFilters(form, doc);
    await renderView(container, doc);
    status.textContent = "Loaded in " + Math.round(performance.now() - started) + " ms.";
  }

  /* reports: every view's document is inlined in the page */
  async function loadReport() {
    const data = JSON.parse(document.getElementById("report-data").textContent);
    for (const name of Object.keys(data.views)) {
      await renderView(document.getElementById("view-" + name), data.views[name]);
    }
    document.body.dataset.ready = "1";
  }

  window.msewatch = {renderView: renderView, loadPage: loadPage, loadReport: loadReport};
})();
