// Differential test of resq's byte-level BPE tokenizer against HuggingFace's own `tokenizers`
// (npm package, the Rust library): seeded random strings, ids and decoded text must be equal.
//
//   node tests/text/diff/diff.mjs --tool build/tests/bpe_encode_tool
//        [--shared DIR] [--count N] [--seed S] [--only name,name] [--bench FILE]
//
// --count strings per shared tokenizer (default 10000; the synthetic variants get a fifth).
// On a mismatch the string is shrunk to a minimal failing one, printed as JSON with both id
// lists, and the exit status is 1. --bench FILE instead times HF on FILE with llama3.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const args = { count: 10000, seed: 20240607, only: null, tool: null, bench: null,
                 shared: process.env.RESQ_SHARED_DIR || path.resolve(here, '../../../../shared') };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, ''), value = argv[i + 1];
    if (!(key in args) || value === undefined) {
      console.error(`diff.mjs: unknown or incomplete option ${argv[i]}`);
      process.exit(2);
    }
    args[key] = key === 'count' || key === 'seed' ? Number(value) : value;
  }
  if (args.only) args.only = args.only.split(',');
  return args;
}

async function loadHf() {
  try {
    return (await import('tokenizers')).default;
  } catch (e) {
    console.error('bpe_differential: FAILED: the npm package `tokenizers` is not installed in ' +
                  `${here}/node_modules (${e.code || e.message}).\n` +
                  'Run scripts/install-node-deps.sh (npm ci in tests/text/diff) first.');
    process.exit(1);
  }
}

// ---------------------------------------------------------------- seeded random strings

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Code point ranges of scripts assigned long ago (Unicode <= 9), so that the Unicode versions
// of Oniguruma/PCRE2/utf8proc/Rust agree on their properties.
const SCRIPT_RANGES = [
  [0x00C0, 0x00FF], [0x0100, 0x017F], [0x0180, 0x024F], [0x0391, 0x03C9], [0x0400, 0x04FF],
  [0x05D0, 0x05EA], [0x0621, 0x064A], [0x0660, 0x0669], [0x06F0, 0x06F9], [0x0905, 0x0939],
  [0x093E, 0x094D], [0x0966, 0x096F], [0x0E01, 0x0E3A], [0x0E50, 0x0E59], [0x10A0, 0x10FA],
  [0x1100, 0x1112], [0x1161, 0x1175], [0x11A8, 0x11C2], [0x1E00, 0x1EFF], [0x2070, 0x209C],
  [0x2150, 0x2188], [0x2190, 0x21FF], [0x2200, 0x22FF], [0x2460, 0x24FF], [0x2500, 0x257F],
  [0x3041, 0x3096], [0x30A1, 0x30FA], [0x3105, 0x312D], [0x4E00, 0x9FA5], [0xAC00, 0xD7A3],
  [0xF900, 0xFA2D], [0xFB00, 0xFB06], [0xFF01, 0xFF5E], [0xFF61, 0xFF9F], [0x1D400, 0x1D7FF],
  [0x1F300, 0x1F64F], [0x1F680, 0x1F6C5], [0x1F1E6, 0x1F1FF], [0x20000, 0x2A6D6],
  [0xE000, 0xE0FF],
];
const COMBINING = [[0x0300, 0x036F], [0x0591, 0x05C7], [0x064B, 0x065F], [0x093C, 0x094D],
                   [0x20D0, 0x20F0]];
const SPACES = [' ', ' ', ' ', '  ', '   ', '\t', '\n', '\n', '\r\n', '\r', '\n\n', ' \n ',
                '\u00A0', '\u3000', '\u0085', '\u2028', '\u2029', '\u000B', '\u000C', '\u1680',
                '\u2000', '\u2003', '\u200A', '\u202F', '\u205F', '\u180E', '\u200B', '\uFEFF',
                '\u001C', '\u001F', '\t\t', ' \t\n'];
const PUNCT = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
const CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve",
                      "'M", "'LL", "'lL", "'D", "'\u017F", "'\u212A", "'", "''", "n't", "N'T"];
const SPECIAL_FRAGMENTS = ['<|', '|>', '<|endoftext', 'endoftext|>', '<|endoftext|>',
                           '<|im_start|>', '<|im_end|>', '<|begin_of_text|>', '<|eot_id|>',
                           '<|end_of_text|>', '<|start_header_id|>', '<tool_call>',
                           '</tool_call>', '<|fim_prefix|>', '<|reserved_special_token_7|>',
                           '<|<|endoftext|>|>', '<mask>', '[word]', '\uFB01x'];
const DECOMPOSED = ['e\u0301', 'A\u030A', 'a\u0323\u0302', 'a\u0302\u0323', '\u1100\u1161',
                    '\u1100\u1161\u11A8', 'o\u0308\u0301', '\u212B', '\u2126', '\u212A',
                    '\u0344', '\u0958', 'n\u0303', '\u00C5\u0301'];

function randomString(rand, specials) {
  const pick = (arr) => arr[Math.floor(rand() * arr.length)];
  const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
  const fromRanges = (ranges) => { const [lo, hi] = pick(ranges); return String.fromCodePoint(int(lo, hi)); };
  const units = int(0, 12);
  let s = '';
  for (let u = 0; u < units; ++u) {
    const r = rand();
    if (r < 0.18) {  // ASCII word, random case
      const len = int(1, 9);
      for (let i = 0; i < len; ++i) {
        const c = String.fromCharCode(97 + int(0, 25));
        s += rand() < 0.3 ? c.toUpperCase() : c;
      }
    } else if (r < 0.30) {
      s += pick(SPACES);
    } else if (r < 0.38) {  // digit runs
      const len = int(1, 12);
      for (let i = 0; i < len; ++i) s += String(int(0, 9));
    } else if (r < 0.46) {
      const len = int(1, 4);
      for (let i = 0; i < len; ++i) s += pick(PUNCT);
    } else if (r < 0.53) {
      s += pick(CONTRACTIONS);
    } else if (r < 0.70) {  // other scripts, sometimes with combining marks
      const len = int(1, 6);
      for (let i = 0; i < len; ++i) {
        s += fromRanges(SCRIPT_RANGES);
        if (rand() < 0.15) s += fromRanges(COMBINING);
      }
    } else if (r < 0.76) {  // emoji sequences: ZWJ, skin tones, variation selectors
      s += fromRanges([[0x1F466, 0x1F469], [0x1F600, 0x1F64F], [0x2600, 0x26FF]]);
      if (rand() < 0.4) s += String.fromCodePoint(int(0x1F3FB, 0x1F3FF));
      if (rand() < 0.4) s += '\uFE0F';
      if (rand() < 0.4) s += '\u200D' + String.fromCodePoint(int(0x1F466, 0x1F469));
    } else if (r < 0.83) {
      s += rand() < 0.5 && specials.length ? pick(specials) : pick(SPECIAL_FRAGMENTS);
    } else if (r < 0.88) {
      s += pick(DECOMPOSED);
    } else if (r < 0.91) {  // control characters, noncharacters, U+FFFD, max code point
      s += pick(['\u0000', '\u0001', '\u0007', '\u001B', '\u007F', '\u0080', '\u009F', '\uFFFD',
                 '\uFFFE', '\uFFFF', '\u{10FFFF}', '\u{E0001}', '\u00AD', '\u034F']);
    } else if (r < 0.94) {  // long runs
      s += pick(['a', ' ', '\n', '1', '!', '\u4E00', 'ab', ' \t', '\u00E9']).repeat(int(5, 60));
    } else {  // any BMP or astral code point of the stable ranges, or plain letters
      s += rand() < 0.5 ? fromRanges(SCRIPT_RANGES) : String.fromCharCode(int(0x20, 0x7E));
    }
  }
  return s;
}

// ---------------------------------------------------------------- both implementations

class ResqTool {
  constructor(toolPath) {
    this.child = spawn(toolPath, ['--serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.lines = createInterface({ input: this.child.stdout })[Symbol.asyncIterator]();
    this.child.on('error', (e) => { console.error(`bpe_differential: cannot run ${toolPath}: ${e.message}`); process.exit(1); });
  }
  async run(dir, texts) {
    this.child.stdin.write(JSON.stringify({ dir, texts }) + '\n');
    const { value, done } = await this.lines.next();
    if (done) throw new Error('bpe_encode_tool exited');
    const reply = JSON.parse(value);
    if (reply.error) throw new Error(`bpe_encode_tool: ${reply.error}`);
    return reply;
  }
  close() { this.child.stdin.end(); }
}

async function hfRun(tok, texts) {
  const encodings = await tok.encodeBatch(texts, { addSpecialTokens: false });
  const ids = encodings.map((e) => Array.from(e.getIds()));
  const decoded = await tok.decodeBatch(ids, false);
  return { ids, decoded };
}

const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

async function differs(tool, dir, tok, text) {
  const [ours, ref] = await Promise.all([tool.run(dir, [text]), hfRun(tok, [text])]);
  return !same(ours.ids[0], ref.ids[0]) || ours.decoded[0] !== ref.decoded[0];
}

// Delta debugging over code points: drop chunks while the string still differs.
async function shrink(tool, dir, tok, text) {
  let cps = Array.from(text);
  for (let chunk = Math.max(1, cps.length >> 1); chunk >= 1; chunk >>= 1) {
    for (let i = 0; i < cps.length;) {
      const candidate = cps.slice(0, i).concat(cps.slice(i + chunk));
      if (candidate.length < cps.length && await differs(tool, dir, tok, candidate.join(''))) {
        cps = candidate;
      } else {
        i += chunk;
      }
    }
  }
  return cps.join('');
}

// ---------------------------------------------------------------- synthetic variants

// Options the four shared tokenizers do not exercise: added-token lstrip/rstrip/single_word,
// normalized non-special tokens, NFKC, Split behaviors, invert, ByteLevel's own regex with
// add_prefix_space, the pair form of merges.
function makeVariants(shared, tmp) {
  const gpt2 = JSON.parse(fs.readFileSync(path.join(shared, 'tokenizers/gpt2/tokenizer.json'), 'utf8'));
  const llama = JSON.parse(fs.readFileSync(path.join(shared, 'tokenizers/llama3/tokenizer.json'), 'utf8'));
  const variants = [];
  const write = (name, tj) => {
    const dir = path.join(tmp, name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
    variants.push({ name, dir });
  };
  const added = (id, content, o) => ({ id, content, single_word: false, lstrip: false, rstrip: false,
                                       normalized: false, special: false, ...o });
  {
    const tj = structuredClone(gpt2);
    tj.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFKC' }] };
    tj.pre_tokenizer = { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: '\\d' }, behavior: 'MergedWithPrevious', invert: false },
      { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }] };
    tj.added_tokens.push(added(50257, '<mask>', { lstrip: true, rstrip: true, special: true }));
    tj.added_tokens.push(added(50258, '[word]', { single_word: true, normalized: true }));
    tj.added_tokens.push(added(50259, 'fix', { normalized: true }));
    tj.added_tokens.push(added(50260, '<|im_start|>', { single_word: true, special: true }));
    write('gpt2-options', tj);
  }
  {
    const tj = structuredClone(llama);
    tj.model.merges = tj.model.merges.slice(0, 60000).map((m) => m.split(' '));
    tj.model.ignore_merges = false;
    tj.pre_tokenizer = { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithNext', invert: false },
      { type: 'Split', pattern: { Regex: '\\p{N}+|[.,!?]' }, behavior: 'Contiguous', invert: false },
      { type: 'Split', pattern: { Regex: '\\s+' }, behavior: 'Removed', invert: true },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false }] };
    tj.post_processor = null;
    write('llama3-splits', tj);
  }
  return variants;
}

// ---------------------------------------------------------------- main

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { Tokenizer } = await loadHf();
  if (args.bench) {
    const tok = Tokenizer.fromFile(path.join(args.shared, 'tokenizers/llama3/tokenizer.json'));
    const text = fs.readFileSync(args.bench, 'utf8');
    let best = Infinity, n = 0;
    for (let r = 0; r < 3; ++r) {
      const fresh = Tokenizer.fromFile(path.join(args.shared, 'tokenizers/llama3/tokenizer.json'));
      const t0 = process.hrtime.bigint();
      n = (await fresh.encode(text, null, { addSpecialTokens: false })).getIds().length;
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
    }
    const mb = Buffer.byteLength(text) / 1e6;
    console.log(`HF tokenizers (npm) llama3 on ${args.bench}: ${Buffer.byteLength(text)} bytes -> ${n} tokens ` +
                `in ${best.toFixed(3)} s (${(best / mb).toFixed(3)} s/MB), best of 3`);
    void tok;
    return 0;
  }
  if (!args.tool) { console.error('diff.mjs: --tool PATH is required'); return 2; }

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'resq_bpe_diff_'));
  const targets = ['gpt2', 'qwen2', 'qwen2.5', 'llama3'].map(
    (name) => ({ name, dir: path.join(args.shared, 'tokenizers', name), count: args.count }));
  if (!args.only || args.only.some((n) => n.includes('-'))) {
    for (const v of makeVariants(args.shared, tmp)) targets.push({ ...v, count: Math.ceil(args.count / 5) });
  }

  const tool = new ResqTool(args.tool);
  let failures = 0, total = 0;
  try {
    for (const target of targets) {
      if (args.only && !args.only.includes(target.name)) continue;
      const tj = JSON.parse(fs.readFileSync(path.join(target.dir, 'tokenizer.json'), 'utf8'));
      const specials = tj.added_tokens.map((t) => t.content);
      const tok = Tokenizer.fromFile(path.join(target.dir, 'tokenizer.json'));
      const rand = mulberry32(args.seed ^ [...target.name].reduce((h, c) => Math.imul(h, 31) + c.charCodeAt(0), 7));
      const texts = Array.from({ length: target.count }, () => randomString(rand, specials));
      const t0 = Date.now();
      const [ours, ref] = await Promise.all([tool.run(target.dir, texts), hfRun(tok, texts)]);
      const bad = [];
      for (let i = 0; i < texts.length; ++i) {
        if (!same(ours.ids[i], ref.ids[i]) || ours.decoded[i] !== ref.decoded[i]) bad.push(i);
      }
      total += texts.length;
      failures += bad.length;
      console.log(`${target.name}: ${texts.length} strings, ${bad.length} mismatches (${Date.now() - t0} ms)`);
      for (const i of bad.slice(0, 3)) {
        const minimal = await shrink(tool, target.dir, tok, texts[i]);
        const [o, r] = await Promise.all([tool.run(target.dir, [minimal]), hfRun(tok, [minimal])]);
        console.log(`  MISMATCH ${target.name}: minimal string ${JSON.stringify(minimal)}` +
                    ` (from ${JSON.stringify(texts[i])})\n    resq ids ${JSON.stringify(o.ids[0])}` +
                    ` decoded ${JSON.stringify(o.decoded[0])}\n    HF   ids ${JSON.stringify(r.ids[0])}` +
                    ` decoded ${JSON.stringify(r.decoded[0])}`);
      }
    }
    // The evaluation text itself (WikiText-2 test, HF rows joined as GPTQ/ResQ do), whole, with
    // the paper's main tokenizers: these are the ids `resq eval` feeds the model.
    const evalText = path.join(args.shared, 'data/wikitext-2-raw/test.hf_join.txt');
    for (const name of ['llama3', 'qwen2.5']) {
      if (args.only && !args.only.includes(name)) continue;
      const dir = path.join(args.shared, 'tokenizers', name);
      const text = fs.readFileSync(evalText, 'utf8');
      const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
      const t0 = Date.now();
      const [ours, ref] = await Promise.all([tool.run(dir, [text]), hfRun(tok, [text])]);
      const a = ours.ids[0], b = ref.ids[0];
      let first = 0;
      while (first < a.length && first < b.length && a[first] === b[first]) ++first;
      const ok = a.length === b.length && first === a.length && ours.decoded[0] === ref.decoded[0];
      total += 1;
      if (!ok) failures += 1;
      console.log(`${name}: test.hf_join.txt (${Buffer.byteLength(text)} bytes, ${b.length} HF tokens) ` +
                  (ok ? 'identical' : `DIFFERS from token ${first}: resq ${JSON.stringify(a.slice(first, first + 8))} ` +
                                      `HF ${JSON.stringify(b.slice(first, first + 8))}`) + ` (${Date.now() - t0} ms)`);
    }
  } finally {
    tool.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`bpe_differential: ${total - failures} passed, ${failures} failed`);
  return failures === 0 ? 0 : 1;
}

process.exitCode = await main();
