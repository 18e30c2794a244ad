/* Leveret dashboard: a small time-series line chart drawn on a <canvas>.
 *
 *   const chart = new LineChart(canvas, [{label: "Publish", color: "#2563eb"}], {unit: "/s"});
 *   chart.push(unixSeconds, [12.5]);   // one sample: a value per series
 *
 * The chart keeps the samples of the last `span` seconds, redraws when a sample arrives or the
 * canvas is resized, and counts its samples in the canvas's data-points attribute. The legend
 * (with each series' latest value) is an HTML list next to the canvas.
 */
"use strict";

class LineChart {
  constructor(canvas, series, options = {}) {
    this.canvas = canvas;
    this.series = series;
    this.unit = options.unit || "";
    this.span = options.span || 600; // seconds shown at most
    this.format = options.format || LineChart.formatNumber;
    this.integer = !!options.integer; // whole numbers only (counts): no ticks at 0.5
    this.samples = []; // [{t, values}]
    this.legend = options.legend || null;
    this.canvas.dataset.points = "0";
    this.drawLegend();
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(canvas);
  }

  push(t, values) {
    const last = this.samples[this.samples.length - 1];
    if (last && t <= last.t) return; // samples arrive in time order; repeats are ignored
    this.samples.push({t, values});
    const oldest = t - this.span;
    while (this.samples.length > 2 && this.samples[0].t < oldest) this.samples.shift();
    this.canvas.dataset.points = String(this.samples.length);
    this.draw();
    this.drawLegend();
  }

  clear() {
    this.samples = [];
    this.canvas.dataset.points = "0";
    this.draw();
    this.drawLegend();
  }

  destroy() {
    this.resizeObserver.disconnect();
  }

  drawLegend() {
    if (!this.legend) return;
    const last = this.samples[this.samples.length - 1];
    const items = this.series.map((one, i) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = one.color;
      const label = document.createElement("span");
      label.textContent = one.label;
      const value = document.createElement("strong");
      value.textContent = last ? this.format(last.values[i]) + this.unit : "–";
      li.append(swatch, label, value);
      return li;
    });
    this.legend.replaceChildren(...items);
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(canvas);
    const ink = style.getPropertyValue("--chart-ink").trim() || "#64748b";
    const grid = style.getPropertyValue("--chart-grid").trim() || "#e2e8f0";
    ctx.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

    const samples = this.samples;
    let top = 0;
    for (const sample of samples) {
      for (const value of sample.values) if (value > top) top = value;
    }
    const ticks = LineChart.ticks(top, this.integer);
    const max = ticks[ticks.length - 1];
    const label = (tick) => (Number.isInteger(tick) ? this.format(tick) : String(+tick.toFixed(3)));
    const labelWidth = Math.max(...ticks.map((tick) => ctx.measureText(label(tick)).width));
    const left = Math.ceil(labelWidth) + 10;
    const right = 8;
    const topPad = 8;
    const bottom = 20;
    const plotW = width - left - right;
    const plotH = height - topPad - bottom;
    const now = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
    const first = samples.length ? samples[0].t : now - 60;
    const from = Math.min(now - 60, Math.max(first, now - this.span)); // at least a minute
    const x = (t) => left + ((t - from) / (now - from)) * plotW;
    const y = (value) => topPad + plotH - (value / max) * plotH;

    // grid and y labels
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const tick of ticks) {
      const py = Math.round(y(tick)) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(left, py);
      ctx.lineTo(left + plotW, py);
      ctx.stroke();
      ctx.fillStyle = ink;
      ctx.fillText(label(tick), left - 6, py);
    }
    // time labels: seconds or minutes before the latest sample
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const spanSeconds = now - from;
    const step = LineChart.timeStep(spanSeconds);
    for (let ago = 0; ago <= spanSeconds; ago += step) {
      const px = x(now - ago);
      if (px < left + 12 && ago !== 0) continue;
      const text = ago === 0 ? "now" : ago % 60 === 0 ? `-${ago / 60}m` : `-${ago}s`;
      ctx.fillStyle = ink;
      ctx.textAlign = ago === 0 ? "right" : "center";
      ctx.fillText(text, ago === 0 ? left + plotW : px, topPad + plotH + 5);
    }

    if (samples.length < 2) {
      ctx.fillStyle = ink;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("collecting samples…", left + plotW / 2, topPad + plotH / 2);
      return;
    }
    // one line per series, the first one with a light fill beneath
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, topPad - 2, plotW, plotH + 4);
    ctx.clip();
    [...this.series.keys()].reverse().forEach((i) => { // the first series ends on top
      const one = this.series[i];
      ctx.beginPath();
      samples.forEach((sample, n) => {
        const px = x(sample.t);
        const py = y(sample.values[i] || 0);
        if (n === 0) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
      });
      ctx.strokeStyle = one.color;
      ctx.lineWidth = 1.75;
      ctx.lineJoin = "round";
      ctx.setLineDash(one.dash || []);
      ctx.stroke();
      ctx.setLineDash([]);
      if (one.fill) {
        ctx.lineTo(x(samples[samples.length - 1].t), y(0));
        ctx.lineTo(x(samples[0].t), y(0));
        ctx.closePath();
        ctx.globalAlpha = 0.12;
        ctx.fillStyle = one.color;
        ctx.fill();
        ctx.globalAlpha = 1;
      }
    });
    ctx.restore();
  }

  // "Nice" y-axis ticks from 0 to at least `top` (1, 2, 2.5 or 5 times a power of ten apart).
  static ticks(top, integer = false) {
    if (!(top > 0)) return [0, 1, 2, 3, 4];
    const rough = top / 4;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    let step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough);
    if (integer) step = step < 1 ? 1 : step === 2.5 ? 2 : step;
    const ticks = [];
    for (let value = 0; value < top + step * 0.999; value += step) ticks.push(+value.toPrecision(12));
    if (ticks.length < 2) ticks.push(step);
    return ticks;
  }

  static timeStep(span) {
    return [10, 15, 30, 60, 120, 300, 600].find((s) => span / s <= 6) || 600;
  }

  static formatNumber(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    const abs = Math.abs(value);
    if (abs >= 1e6) return (value / 1e6).toFixed(abs >= 1e7 ? 0 : 1) + "M";
    if (abs >= 1e4) return (value / 1e3).toFixed(abs >= 1e5 ? 0 : 1) + "k";
    if (Number.isInteger(value)) return String(value);
    return value.toFixed(abs >= 100 ? 0 : 1);
  }
}

window.LineChart = LineChart;
