// Mask pixels as one byte per pixel (0 = keep, 255 = repaint) and the operations on them.
// Grow and shrink use a square window, like the server's own mask dilation.

/** The alpha channel of RGBA pixels. */
export function alphaOf(rgba) {
  const alpha = new Uint8ClampedArray(rgba.length / 4);
  for (let i = 0, j = 3; i < alpha.length; i++, j += 4) alpha[i] = rgba[j];
  return alpha;
}

/** RGBA pixels of one colour with the given alpha. */
export function rgbaOf(alpha, [r, g, b]) {
  const rgba = new Uint8ClampedArray(alpha.length * 4);
  for (let i = 0, j = 0; i < alpha.length; i++, j += 4) {
    rgba[j] = r;
    rgba[j + 1] = g;
    rgba[j + 2] = b;
    rgba[j + 3] = alpha[i];
  }
  return rgba;
}

export function binarise(alpha) {
  const out = new Uint8ClampedArray(alpha.length);
  for (let i = 0; i < alpha.length; i++) out[i] = alpha[i] >= 128 ? 255 : 0;
  return out;
}

export function invert(alpha) {
  const out = new Uint8ClampedArray(alpha.length);
  for (let i = 0; i < alpha.length; i++) out[i] = alpha[i] >= 128 ? 0 : 255;
  return out;
}

export function isEmpty(alpha) {
  for (let i = 0; i < alpha.length; i++) if (alpha[i] >= 128) return false;
  return true;
}

// one pass of a (2r+1)-wide max filter along rows (step 1) or columns (step width), by counts
function spread(src, width, height, radius, alongRows) {
  const out = new Uint8ClampedArray(src.length);
  const lines = alongRows ? height : width;
  const length = alongRows ? width : height;
  const stride = alongRows ? 1 : width;
  const counts = new Int32Array(length + 1);
  for (let line = 0; line < lines; line++) {
    const start = alongRows ? line * width : line;
    for (let k = 0; k < length; k++) counts[k + 1] = counts[k] + (src[start + k * stride] ? 1 : 0);
    for (let k = 0; k < length; k++) {
      const lo = Math.max(0, k - radius);
      const hi = Math.min(length, k + radius + 1);
      out[start + k * stride] = counts[hi] - counts[lo] > 0 ? 255 : 0;
    }
  }
  return out;
}

/** Grow the mask by `radius` pixels on every side (a square window). */
export function grow(alpha, width, height, radius) {
  const binary = binarise(alpha);
  return spread(spread(binary, width, height, radius, true), width, height, radius, false);
}

/** Shrink the mask by `radius` pixels on every side. */
export function shrink(alpha, width, height, radius) {
  return invert(grow(invert(alpha), width, height, radius));
}

/**
 * A mask from an image, the way the server reads mask files: the alpha channel when the
 * image has transparency, else the brightest channel (white = repaint).
 */
export function maskFromPixels(rgba) {
  let transparent = false;
  for (let j = 3; j < rgba.length; j += 4) {
    if (rgba[j] < 255) {
      transparent = true;
      break;
    }
  }
  const alpha = new Uint8ClampedArray(rgba.length / 4);
  for (let i = 0, j = 0; i < alpha.length; i++, j += 4) {
    const value = transparent ? rgba[j + 3] : Math.max(rgba[j], rgba[j + 1], rgba[j + 2]);
    alpha[i] = value >= 128 ? 255 : 0;
  }
  return alpha;
}
