// Pixels of a page's canvas, for the board's tests: how many are drawn (alpha above 0), and
// whether the one at CSS point (x, y), or one next to it, is.
export function inked(page, selector) {
  return page.$eval(selector, (c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n += 1;
    return n;
  });
}

export function inkedAt(page, selector, x, y) {
  return page.$eval(selector, (c, [x, y]) => {
    const r = c.width / c.clientWidth;
    const d = c.getContext("2d").getImageData(Math.round(x * r) - 1, Math.round(y * r) - 1, 3, 3);
    return d.data.some((v, i) => i % 4 === 3 && v > 0);
  }, [x, y]);
}
