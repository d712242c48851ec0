// Canvas drawing for the board, with no library: a sparkline per row and one chart (line or
// candles, a time axis in UTC and a price axis). Both size their canvas to its CSS box at the
// device's pixel ratio and return where they drew the last point, for the text alternative
// and the tests.

const UP = "#2fbf5b";
const DOWN = "#e5484d";
const LINE = "#5b9cf6";
const GRID = "#232830";
const TEXT = "#8a8f98";
const FONT = '11px system-ui, "DejaVu Sans", sans-serif';

function fit(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

// values left to right, evenly spaced; coloured by the move from the first to the last
export function drawSparkline(canvas, values) {
  const { ctx, w, h } = fit(canvas);
  if (values.length === 0) return null;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const pad = 2;
  const x = (i) => (values.length === 1 ? w - pad : pad + (i * (w - 2 * pad)) / (values.length - 1));
  const y = (v) => (hi === lo ? h / 2 : pad + ((hi - v) * (h - 2 * pad)) / (hi - lo));
  const last = values.at(-1);
  ctx.strokeStyle = last > values[0] ? UP : last < values[0] ? DOWN : LINE;
  ctx.lineWidth = 1.5;
  ctx.lineJoin = "round";
  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  if (values.length === 1) ctx.lineTo(pad, y(last));
  ctx.stroke();
  ctx.fillStyle = ctx.strokeStyle;
  ctx.beginPath();
  ctx.arc(x(values.length - 1), y(last), 2, 0, 2 * Math.PI);
  ctx.fill();
  return { x: x(values.length - 1), y: y(last), value: last };
}

// a round step (1, 2 or 5 times a power of ten) giving about `count` ticks over `span`
function niceStep(span, count) {
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400]
  .map((s) => s * 1000);

export function clock(t, seconds = true) {
  return new Date(t).toISOString().slice(11, seconds ? 19 : 16);
}

// bars as Series keeps them, `step` their interval in ms, mode "line" or "candles"
export function drawChart(canvas, bars, step, mode) {
  const { ctx, w, h } = fit(canvas);
  if (bars.length === 0) return null;
  const left = 8, right = 64, top = 10, bottom = 22;
  const x1 = bars.at(-1).t + step;
  const x0 = Math.min(bars[0].t, x1 - 30 * step);
  let lo = Math.min(...bars.map((b) => (mode === "line" ? b.close : b.low)));
  let hi = Math.max(...bars.map((b) => (mode === "line" ? b.close : b.high)));
  const margin = Math.max((hi - lo) * 0.08, Math.abs(hi) * 0.001, 0.005);
  lo -= margin;
  hi += margin;
  const px = (t) => left + ((t - x0) * (w - left - right)) / (x1 - x0);
  const py = (v) => top + ((hi - v) * (h - top - bottom)) / (hi - lo);

  ctx.font = FONT;
  ctx.lineWidth = 1;
  // the price axis on the right, with a grid line per tick
  const ps = niceStep(hi - lo, 5);
  const digits = Math.max(2, -Math.floor(Math.log10(ps)));
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  for (let v = Math.ceil(lo / ps) * ps; v <= hi; v += ps) {
    ctx.strokeStyle = GRID;
    ctx.beginPath();
    ctx.moveTo(left, Math.round(py(v)) + 0.5);
    ctx.lineTo(w - right, Math.round(py(v)) + 0.5);
    ctx.stroke();
    ctx.fillStyle = TEXT;
    ctx.fillText(v.toFixed(digits), w - right + 6, py(v));
  }
  // the time axis at the bottom, in UTC
  const ts = TIME_STEPS.find((s) => ((x1 - x0) / s) * 80 <= w - left - right) ?? 86400000;
  ctx.textBaseline = "top";
  ctx.textAlign = "center";
  for (let t = Math.ceil(x0 / ts) * ts; t <= x1; t += ts) {
    ctx.strokeStyle = GRID;
    ctx.beginPath();
    ctx.moveTo(Math.round(px(t)) + 0.5, top);
    ctx.lineTo(Math.round(px(t)) + 0.5, h - bottom);
    ctx.stroke();
    const label = clock(t, ts < 60000);
    const half = ctx.measureText(label).width / 2;
    if (px(t) - half < 0 || px(t) + half > w - right) continue;
    ctx.fillStyle = TEXT;
    ctx.fillText(label, px(t), h - bottom + 5);
  }

  const mid = (b) => px(b.t + step / 2);
  if (mode === "candles") {
    const body = Math.max(1, ((w - left - right) * step) / (x1 - x0) * 0.7);
    for (const b of bars) {
      ctx.strokeStyle = ctx.fillStyle = b.close >= b.open ? UP : DOWN;
      ctx.beginPath();
      ctx.moveTo(Math.round(mid(b)) + 0.5, py(b.high));
      ctx.lineTo(Math.round(mid(b)) + 0.5, py(b.low));
      ctx.stroke();
      const y = Math.min(py(b.open), py(b.close));
      ctx.fillRect(mid(b) - body / 2, y, body, Math.max(1, Math.abs(py(b.open) - py(b.close))));
    }
  } else {
    ctx.strokeStyle = LINE;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.beginPath();
    bars.forEach((b, i) => (i ? ctx.lineTo(mid(b), py(b.close)) : ctx.moveTo(mid(b), py(b.close))));
    ctx.stroke();
  }
  // the last price: a dotted line across and its value on the axis
  const last = bars.at(-1);
  const y = py(last.close);
  const before = bars.length > 1 ? bars.at(-2).close : last.open;
  ctx.fillStyle = ctx.strokeStyle = last.close >= before ? UP : DOWN;
  ctx.lineWidth = 1;
  ctx.setLineDash([2, 3]);
  ctx.beginPath();
  ctx.moveTo(left, y);
  ctx.lineTo(w - right, y);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillRect(w - right + 1, y - 8, right - 2, 16);
  ctx.fillStyle = "#111418";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.fillText(last.close.toFixed(digits), w - right + 6, y);
  if (mode === "line") {
    ctx.fillStyle = LINE;
    ctx.beginPath();
    ctx.arc(mid(last), y, 3, 0, 2 * Math.PI);
    ctx.fill();
  }
  return { x: mid(last), y, price: last.close, time: last.t };
}
