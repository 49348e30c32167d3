// open-ot's `text` type, as much as the OT tests and the Node baseline server need:
// apply and transform, with UTF-16 lengths (a JS string's own). It follows open-ot's
// algorithms (trailing retains kept), like `syncmux::ot::TextOp`.

const kind = (c) => ("i" in c ? "i" : "r" in c ? "r" : "d");
export const len = (c) => ("i" in c ? c.i.length : c.r ?? c.d);

/** Appends a component, dropping empties and merging neighbours of one kind. */
function push(op, c) {
  if (len(c) === 0) return;
  const last = op[op.length - 1];
  if (last && kind(last) === kind(c)) {
    const k = kind(c);
    last[k] = k === "i" ? last.i + c.i : last[k] + c[k];
  } else {
    op.push({ ...c });
  }
}

export function apply(op, text) {
  let out = "";
  let pos = 0;
  for (const c of op) {
    if ("i" in c) {
      out += c.i;
      continue;
    }
    const n = c.r ?? c.d;
    if (pos + n > text.length) throw new Error(`op ${JSON.stringify(op)} past the end of ${text}`);
    if ("r" in c) out += text.slice(pos, pos + n);
    pos += n;
  }
  return out + text.slice(pos);
}

/** A cursor over an op's components; past the end, an endless retain. */
class Walk {
  constructor(op) {
    this.op = op;
    this.at = 0;
    this.used = 0;
  }
  current() {
    return this.op[this.at];
  }
  remaining() {
    const c = this.current();
    return c ? len(c) - this.used : Infinity;
  }
  skip(n) {
    const c = this.current();
    if (!c) return;
    this.used += n;
    if (this.used >= len(c)) this.next();
  }
  next() {
    this.at += 1;
    this.used = 0;
  }
}

/** `a` rewritten to apply after `b` (both made on one document); `left`: a's insert first at a tie. */
export function transform(a, b, left) {
  const out = [];
  const wa = new Walk(a);
  const wb = new Walk(b);
  for (;;) {
    const ca = wa.current();
    const cb = wb.current();
    if (!ca && !cb) return out;
    if (ca && "i" in ca && (left || !(cb && "i" in cb))) {
      push(out, { i: ca.i.slice(wa.used) });
      wa.next();
    } else if (cb && "i" in cb) {
      push(out, { r: len(cb) - wb.used });
      wb.next();
    } else {
      const n = Math.min(wa.remaining(), wb.remaining());
      if (!(cb && "d" in cb)) push(out, ca && "d" in ca ? { d: n } : { r: n });
      wa.skip(n);
      wb.skip(n);
    }
  }
}
