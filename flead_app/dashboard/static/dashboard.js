// FLEAD live dashboard: draws every panel of flead_app/dashboard/queries.py from /dashboard/data.
// Plain browser JavaScript with the vendored Chart.js and its date-fns adapter; no build step.
// Each panel element carries data-state ("loading", "data", "empty", "error") and data-rows,
// which the browser test reads; document.body carries data-updates (successful refreshes),
// data-now (the right end of every time axis) and data-page-state (the data endpoint's state:
// ready, waiting_for_rows, waiting_for_tables, waiting_for_database, ...).
// Time axes are Chart.js time scales spanning exactly the selected range (now - range .. now,
// "now" being the server's generated_at), with round ticks in the viewer's local time.
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("flead-config").textContent);
  var grid = document.getElementById("grid");
  var banner = document.getElementById("banner");
  var updated = document.getElementById("updated");
  var PALETTE = ["#5794f2", "#f2cc0c", "#73bf69", "#ff9830", "#b877d9", "#f2495c", "#8ab8ff", "#96d98d"];
  var SEVERITY = { warning: "#ff9830", critical: "#f2495c" };
  var ROW_PX = 36;
  var MINUTE = 60000;
  var HOUR = 3600000;
  var DAY = 86400000;
  var UNIT_MS = { minute: MINUTE, hour: HOUR, day: DAY };
  // tick steps in the viewer's local time, smallest first: [count, unit]
  var STEPS = [
    [1, "minute"], [2, "minute"], [5, "minute"], [10, "minute"], [15, "minute"], [30, "minute"],
    [1, "hour"], [2, "hour"], [3, "hour"], [6, "hour"], [12, "hour"],
    [1, "day"], [2, "day"], [7, "day"], [14, "day"], [30, "day"],
  ];
  var LABEL_PX = 64; // room one "HH:mm" tick label needs
  var charts = {};
  var cards = {};
  var updates = 0;
  var lastGood = null; // generated_at of the last payload drawn from a reachable database

  if (window.Chart) {
    Chart.defaults.color = "#ccccdc";
    Chart.defaults.borderColor = "rgba(204, 204, 220, 0.12)";
    Chart.defaults.font.family = "Inter, Helvetica, Arial, sans-serif";
    Chart.defaults.animation = false;
  }

  // ---------------------------------------------------------------- formatting
  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function formatTime(ms, withDate) {
    var d = new Date(ms);
    var t = pad(d.getHours()) + ":" + pad(d.getMinutes());
    return withDate ? d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + t + ":" + pad(d.getSeconds()) : t;
  }

  function timezoneText() {
    var off = -new Date().getTimezoneOffset();
    var sign = off < 0 ? "-" : "+";
    off = Math.abs(off);
    var zone = "";
    try {
      zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    } catch (e) {
      zone = "";
    }
    if (off === 0 && /^(Etc\/)?(UTC|UCT|Universal|Zulu)$/.test(zone)) return "times: UTC";
    return "times: " + (zone ? zone + " " : "") + "UTC" + sign + pad(Math.floor(off / 60)) + ":" + pad(off % 60);
  }

  function formatValue(value, unit, decimals) {
    if (value === null || value === undefined) return "\u2014";
    if (unit === "dateTimeAsIso") return formatTime(Date.parse(value), true);
    if (typeof value !== "number") return String(value);
    if (unit === "percentunit") return (value * 100).toFixed(decimals === null || decimals === undefined ? 1 : decimals) + "%";
    var digits = decimals === null || decimals === undefined ? (Number.isInteger(value) ? 0 : 2) : decimals;
    return value.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function axisTicks(unit, integers) {
    return {
      precision: integers ? 0 : undefined,
      callback: function (v) {
        return unit === "percentunit" ? Math.round(v * 1000) / 10 + "%" : formatValue(v, unit, null);
      },
    };
  }

  // ---------------------------------------------------------------- layout
  function buildCard(panel) {
    var card = document.createElement("section");
    card.className = "panel panel-" + panel.type;
    card.id = "panel-" + panel.id;
    card.dataset.panel = panel.id;
    card.dataset.state = "loading";
    card.dataset.rows = "0";
    card.style.gridColumn = "span " + panel.width;
    card.style.height = panel.height * ROW_PX + "px";
    var title = document.createElement("h2");
    title.textContent = panel.title;
    title.title = panel.description || "";
    var body = document.createElement("div");
    body.className = "body";
    var empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = panel.empty_text;
    card.appendChild(title);
    card.appendChild(body);
    card.appendChild(empty);
    grid.appendChild(card);
    cards[panel.id] = { el: card, body: body, empty: empty };
  }

  function setState(panel, state, rows, message) {
    var c = cards[panel.id];
    c.el.dataset.state = state;
    c.el.dataset.rows = String(rows);
    c.empty.textContent = state === "error" ? "query failed: " + message : panel.empty_text;
    c.empty.style.display = state === "data" ? "none" : "flex";
    c.body.style.visibility = state === "data" ? "visible" : "hidden";
  }

  // ---------------------------------------------------------------- renderers
  function renderStat(panel, rows) {
    var c = cards[panel.id];
    var col = panel.columns[0];
    var value = rows.length ? rows[0][col] : null;
    if (value === null || value === undefined) return setState(panel, "empty", 0);
    c.body.innerHTML = "";
    if (panel.columns.length === 1) {
      var v = document.createElement("div");
      v.className = "stat";
      v.textContent = formatValue(value, panel.units[col], panel.decimals);
      c.body.appendChild(v);
    } else {
      // several values of one row, each under its label (the headline)
      var list = document.createElement("div");
      list.className = "stats";
      panel.columns.forEach(function (name) {
        var item = document.createElement("div");
        item.className = "stat-item";
        item.dataset.column = name;
        var val = document.createElement("div");
        val.className = typeof rows[0][name] === "number" ? "stat-value" : "stat-value stat-text";
        val.textContent = formatValue(rows[0][name], panel.units[name], panel.decimals);
        var label = document.createElement("div");
        label.className = "stat-label";
        label.textContent = panel.labels[name];
        item.appendChild(val);
        item.appendChild(label);
        list.appendChild(item);
      });
      c.body.appendChild(list);
    }
    setState(panel, "data", rows.length);
  }

  function renderTable(panel, rows) {
    var c = cards[panel.id];
    if (!rows.length) return setState(panel, "empty", 0);
    var table = document.createElement("table");
    var head = table.createTHead().insertRow();
    panel.columns.forEach(function (col) {
      var th = document.createElement("th");
      th.textContent = panel.labels[col];
      head.appendChild(th);
    });
    var tbody = table.createTBody();
    rows.forEach(function (row) {
      var tr = tbody.insertRow();
      panel.columns.forEach(function (col) {
        var td = tr.insertCell();
        td.textContent = formatValue(row[col], panel.units[col], panel.units[col] === "percentunit" ? 1 : null);
        if (typeof row[col] === "number") td.className = "num";
      });
    });
    c.body.innerHTML = "";
    c.body.appendChild(table);
    setState(panel, "data", rows.length);
  }

  // counts get whole-number ticks: "1.5 models" per minute reads wrong
  function allIntegers(panel, rows) {
    var cols = panel.columns.slice(1).filter(function (c) {
      return c !== panel.series_column && panel.units[c] === panel.unit;
    });
    return rows.every(function (row) {
      return cols.every(function (c) {
        return typeof row[c] !== "number" || Number.isInteger(row[c]);
      });
    });
  }

  function seriesColor(name, i) {
    return SEVERITY[name] || PALETTE[i % PALETTE.length];
  }

  // ---------------------------------------------------------------- time axes
  // the largest tick count that fits `px` pixels, at most 8, and the smallest round step giving it
  function tickStep(rangeMs, px) {
    var most = Math.max(2, Math.min(8, Math.floor(px / LABEL_PX)));
    for (var i = 0; i < STEPS.length; i++) {
      if (rangeMs / (STEPS[i][0] * UNIT_MS[STEPS[i][1]]) <= most) return STEPS[i];
    }
    return STEPS[STEPS.length - 1];
  }

  // ticks at round local times (every 15 min, every 3 h, ...) between min and max, both included;
  // stepping with Date's local setters keeps them on the local clock across midnight and DST
  function localTicks(min, max, step) {
    var n = step[0];
    var unit = step[1];
    var d = new Date(min);
    d.setSeconds(0, 0);
    if (unit === "minute") d.setMinutes(Math.floor(d.getMinutes() / n) * n);
    else if (unit === "hour") d.setHours(Math.floor(d.getHours() / n) * n, 0);
    else d.setHours(0, 0);
    var ticks = [];
    for (var guard = 0; d.getTime() <= max && guard < 1000; guard++) {
      var t = d.getTime();
      if (t >= min) ticks.push({ value: t, major: unit !== "day" && d.getHours() === 0 && d.getMinutes() === 0 });
      if (unit === "minute") d.setMinutes(d.getMinutes() + n);
      else if (unit === "hour") d.setHours(d.getHours() + n);
      else d.setDate(d.getDate() + n);
    }
    return ticks;
  }

  // x axis of every time series: exactly now - range .. now, whatever the rows cover
  function timeAxis(panel, now, widthPx) {
    var min = now - config.range_s * 1000;
    var step = tickStep(now - min, widthPx);
    return {
      type: "time",
      min: min,
      max: now,
      offset: false,
      grid: { offset: false }, // a bar chart's default puts grid lines between ticks, half a step off
      stacked: panel.stacked,
      time: {
        unit: step[1],
        displayFormats: { minute: "HH:mm", hour: "HH:mm", day: "MMM d" },
      },
      ticks: {
        source: "auto",
        autoSkip: true,
        maxRotation: 0,
        major: { enabled: true },
        font: function (ctx) {
          return ctx.tick && ctx.tick.major ? { weight: "bold" } : undefined;
        },
      },
      afterBuildTicks: function (scale) {
        scale.ticks = localTicks(scale.min, scale.max, step);
      },
    };
  }

  // timeseries: wide (time, a, b...) or long (time, series name, value) -> Chart.js datasets of {x, y};
  // a bar stands in the middle of its bucket, so it covers its own minute
  function timeDatasets(panel, rows) {
    var series = {};
    var order = [];
    var shift = panel.bars ? (panel.bucket_s * 1000) / 2 : 0;
    function add(name, x, y) {
      if (!(name in series)) {
        series[name] = [];
        order.push(name);
      }
      series[name].push({ x: x, y: y });
    }
    rows.forEach(function (row) {
      var x = Date.parse(row.time) + shift;
      if (panel.series_column) {
        var valueCol = panel.columns.filter(function (c) {
          return c !== "time" && c !== panel.series_column;
        })[0];
        add(String(row[panel.series_column]), x, row[valueCol]);
      } else {
        panel.columns.slice(1).forEach(function (col) {
          add(col, x, row[col]);
        });
      }
    });
    return order.map(function (name, i) {
      var color = seriesColor(name, i);
      return {
        label: panel.series_column ? name : panel.labels[name] || name,
        data: series[name],
        borderColor: color,
        backgroundColor: panel.bars ? color : color + "33",
        fill: !panel.bars && order.length === 1,
        pointRadius: panel.bars ? 0 : 2,
        borderWidth: panel.bars ? 0 : 2,
        tension: 0.2,
        grouped: false,
        // one bucket wide on the time axis
        barThickness: panel.bars
          ? function (ctx) {
              var x = ctx.chart.scales && ctx.chart.scales.x;
              if (!x || !x.width) return 1;
              var px = x.getPixelForValue(x.min + panel.bucket_s * 1000) - x.getPixelForValue(x.min);
              return px >= 3 ? px - 1 : Math.max(1, px); // a pixel between neighbours when there is room
            }
          : undefined,
      };
    });
  }

  function timeseriesConfig(panel, rows, now) {
    var widthPx = cards[panel.id].body.clientWidth || 600;
    var shift = panel.bars ? (panel.bucket_s * 1000) / 2 : 0;
    return {
      type: panel.bars ? "bar" : "line",
      data: { datasets: timeDatasets(panel, rows) },
      options: {
        maintainAspectRatio: false,
        parsing: true,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: timeAxis(panel, now, widthPx),
          y: { beginAtZero: true, stacked: panel.stacked, ticks: axisTicks(panel.unit, allIntegers(panel, rows)) },
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: {
            callbacks: {
              title: function (items) {
                if (!items.length) return "";
                var t = items[0].parsed.x - shift;
                return panel.bars
                  ? formatTime(t, true) + " \u2013 " + formatTime(t + panel.bucket_s * 1000, false)
                  : formatTime(t, true);
              },
              label: function (item) {
                return item.dataset.label + ": " + formatValue(item.parsed.y, panel.unit, panel.decimals);
              },
            },
          },
        },
      },
    };
  }

  function barchartConfig(panel, rows) {
    var xCol = panel.columns[0];
    var valueCols = panel.columns.slice(1);
    var datasets = valueCols.map(function (col, i) {
      var unit = panel.units[col];
      var color = PALETTE[i % PALETTE.length];
      return {
        label: panel.labels[col],
        data: rows.map(function (r) {
          return r[col];
        }),
        backgroundColor: color,
        yAxisID: unit === panel.unit ? "y" : "y2",
        unit: unit,
      };
    });
    var scales = {
      x: { ticks: { autoSkip: false, maxRotation: 45 } },
      y: { beginAtZero: true, ticks: axisTicks(panel.unit, allIntegers(panel, rows)) },
    };
    var other = valueCols.filter(function (c) {
      return panel.units[c] !== panel.unit;
    });
    if (other.length) {
      var unit2 = panel.units[other[0]];
      scales.y2 = {
        position: "right",
        beginAtZero: true,
        max: unit2 === "percentunit" ? 1 : undefined,
        grid: { drawOnChartArea: false },
        ticks: axisTicks(unit2),
      };
    }
    return {
      type: "bar",
      data: {
        labels: rows.map(function (r) {
          return String(r[xCol]);
        }),
        datasets: datasets,
      },
      options: {
        maintainAspectRatio: false,
        scales: scales,
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: {
            callbacks: {
              label: function (item) {
                return item.dataset.label + ": " + formatValue(item.parsed.y, item.dataset.unit, panel.decimals);
              },
            },
          },
        },
      },
    };
  }

  function renderChart(panel, rows, now) {
    var c = cards[panel.id];
    if (!rows.length) {
      if (charts[panel.id]) {
        charts[panel.id].destroy();
        delete charts[panel.id];
        c.body.innerHTML = "";
      }
      return setState(panel, "empty", 0);
    }
    var cfg = panel.type === "timeseries" ? timeseriesConfig(panel, rows, now) : barchartConfig(panel, rows);
    var chart = charts[panel.id];
    if (chart && chart.config.type === cfg.type) {
      chart.data = cfg.data;
      chart.options = cfg.options;
      chart.update("none");
    } else {
      if (chart) chart.destroy();
      c.body.innerHTML = "";
      var canvas = document.createElement("canvas");
      c.body.appendChild(canvas);
      charts[panel.id] = new Chart(canvas, cfg);
    }
    setState(panel, "data", rows.length);
  }

  // a table not created yet is not an error: the panel has no rows, the page notice says why
  function render(panel, result, now) {
    if (!result) return setState(panel, "empty", 0);
    if (result.error) return setState(panel, "error", 0, result.error);
    var rows = result.rows || [];
    if (panel.type === "stat") return renderStat(panel, rows);
    if (panel.type === "table") return renderTable(panel, rows);
    return renderChart(panel, rows, now);
  }

  // ---------------------------------------------------------------- refresh loop
  // kind "notice": calm, the normal first seconds or a database restarting; "error": something to fix
  function showBanner(text, kind) {
    banner.hidden = !text;
    banner.textContent = text || "";
    banner.dataset.kind = text ? kind : "";
  }

  function retryText() {
    return config.refresh_s > 0 ? " Retrying every " + config.refresh_s + " s." : " Reload the page to retry.";
  }

  function refresh() {
    return fetch(config.data_url, { cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        var now = Date.parse(data.generated_at);
        // the database went away after the page had drawn it: keep the panels, say how old they are
        var keep = data.state === "waiting_for_database" && lastGood !== null;
        document.body.dataset.pageState = data.state || "";
        if (data.error) showBanner(data.error, "error");
        else if (keep) showBanner(data.notice + " Showing the data of " + formatTime(lastGood, true) + ".", "notice");
        else showBanner(data.notice, "notice");
        if (!keep) {
          document.body.dataset.now = String(now); // the right end of every time axis
          config.panels.forEach(function (panel) {
            try {
              render(panel, data.panels[panel.id], now);
            } catch (err) {
              // a bug of this page, not of the data: say so on the panel and in the console
              console.error("panel " + panel.id + " failed to draw:", err);
              setState(panel, "error", 0, "the page could not draw it (" + err.message + ")");
            }
          });
          if (!data.error && data.state !== "waiting_for_database") lastGood = now;
        }
        updates += 1;
        document.body.dataset.updates = String(updates);
        updated.textContent = (keep ? "checked " : "updated ") + formatTime(now, true);
      })
      .catch(function (err) {
        console.error("dashboard refresh failed:", err);
        showBanner("The page's server does not answer (" + err.message + ")." + retryText(), "notice");
        document.body.dataset.failures = String(Number(document.body.dataset.failures || 0) + 1);
      });
  }

  document.getElementById("timezone").textContent = timezoneText();
  config.panels.forEach(buildCard);
  refresh();
  if (config.refresh_s > 0) setInterval(refresh, config.refresh_s * 1000);
})();
