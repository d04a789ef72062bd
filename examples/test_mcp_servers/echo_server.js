#!/usr/bin/env node
// ukload's MCP test server: newline-delimited JSON-RPC 2.0 on stdio.
//
// No npm dependencies. stdout carries protocol messages only; every log line goes
// to stderr. Never answers a notification.
//
// Dual-era (the same answers as ukload-guest's built-in tools, message for message):
// - a request whose params._meta names a protocol version is served statelessly
//   per 2026-07-28: the version is checked on every request (-32022 with the
//   supported list when unknown), server/discover answers versions, capabilities
//   and identity, every result carries resultType "complete" and the server's
//   identity in _meta, and ping does not exist (-32601);
// - initialize selects legacy semantics (2024-11-05 ... 2025-11-25): version
//   negotiation, ping -> {}, JSON-RPC batches when 2025-03-26 was negotiated.
//
// Tools (schemas in tools/list):
//   echo {message: string}                -> text "Echo: <message>"
//   add {a: number, b: number}            -> text "<a> + <b> = <sum>", structuredContent {sum}
//   get_timestamp {}                      -> Unix time in seconds, as text and structuredContent {timestamp}
//   error_test {error_message?: string}   -> a tool failure: result with isError: true and the message
// Every tool also accepts `delay_ms` (integer 0..=60000): answer only after that long.
//
// Errors: arguments breaking the schema -> a tool result with isError true naming
// the argument (SEP-1303); unknown tool or arguments that are not an object
// (null counts as none) -> -32602; unparsable JSON -> -32700 with id null; not a
// JSON-RPC request -> -32600; unknown method -> -32601; more than 256 calls
// pending -> -32603.
//
// Options:
//   --delay-ms N    delay every tools/call by N ms (a `delay_ms` argument overrides it)
//   --page-size N   split tools/list into pages of N tools, linked by nextCursor
//   --era E         dual (default), modern (2026-07-28 only) or legacy (initialize only)
//
// A slow call never blocks other calls (timers, not busy waits),
// notifications/cancelled {requestId} drops the pending answer to that request,
// and a call with _meta.progressToken gets notifications/progress every 200 ms.
'use strict';

const LEGACY_VERSIONS = ['2024-11-05', '2025-03-26', '2025-06-18', '2025-11-25'];
const MODERN_VERSIONS = ['2026-07-28'];
const LATEST_LEGACY_VERSION = LEGACY_VERSIONS[LEGACY_VERSIONS.length - 1];
const BATCH_VERSION = '2025-03-26';
const SERVER_INFO = { name: 'ukload-echo-server', version: '1.0.0' };
const DEFAULT_ERROR_MESSAGE = 'Intentional error for testing';
const META_PROTOCOL_VERSION = 'io.modelcontextprotocol/protocolVersion';
const META_CLIENT_CAPABILITIES = 'io.modelcontextprotocol/clientCapabilities';
const META_SERVER_INFO = 'io.modelcontextprotocol/serverInfo';
const RESULT_TTL_MS = 60000;
const MAX_IN_FLIGHT = 256;
const PROGRESS_INTERVAL_MS = 200;

const PARSE_ERROR = -32700;
const INVALID_REQUEST = -32600;
const METHOD_NOT_FOUND = -32601;
const INVALID_PARAMS = -32602;
const INTERNAL_ERROR = -32603;
const UNSUPPORTED_PROTOCOL_VERSION = -32022;

function log(msg) {
  process.stderr.write(`[echo_server ${process.pid}] ${msg}\n`);
}

function usage(msg) {
  log(`${msg}\nusage: echo_server.js [--delay-ms N] [--page-size N] [--era dual|modern|legacy]`);
  process.exit(2);
}

function parseOptions(argv) {
  const opts = { delayMs: 0, pageSize: 0, era: 'dual' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const takeInt = (name) => {
      const raw = argv[++i];
      const n = Number(raw);
      if (raw === undefined || !Number.isInteger(n) || n < 0) {
        usage(`${name} needs a non-negative integer, got ${JSON.stringify(raw)}`);
      }
      return n;
    };
    if (arg === '--delay-ms') opts.delayMs = takeInt(arg);
    else if (arg === '--page-size') opts.pageSize = takeInt(arg);
    else if (arg === '--era') {
      opts.era = argv[++i];
      if (!['dual', 'modern', 'legacy'].includes(opts.era)) {
        usage(`--era needs dual, modern or legacy, got ${JSON.stringify(opts.era)}`);
      }
    }
    else usage(`unknown option ${JSON.stringify(arg)}`);
  }
  return opts;
}

const OPTIONS = parseOptions(process.argv.slice(2));
const SERVES_MODERN = OPTIONS.era !== 'legacy';
const SERVES_LEGACY = OPTIONS.era !== 'modern';
const SUPPORTED_VERSIONS = [
  ...(SERVES_LEGACY ? LEGACY_VERSIONS : []),
  ...(SERVES_MODERN ? MODERN_VERSIONS : []),
];

const DELAY_PROPERTY = {
  type: 'integer',
  minimum: 0,
  maximum: 60000,
  description: 'Test aid: answer only after this many milliseconds',
};

const TOOLS = [
  {
    name: 'echo',
    description: 'Returns the message it is given, prefixed with "Echo: "',
    inputSchema: {
      type: 'object',
      properties: {
        message: { type: 'string', description: 'Text to echo back' },
        delay_ms: DELAY_PROPERTY,
      },
      required: ['message'],
      additionalProperties: false,
    },
  },
  {
    name: 'add',
    description: 'Adds two numbers',
    inputSchema: {
      type: 'object',
      properties: {
        a: { type: 'number', description: 'First addend' },
        b: { type: 'number', description: 'Second addend' },
        delay_ms: DELAY_PROPERTY,
      },
      required: ['a', 'b'],
      additionalProperties: false,
    },
    outputSchema: {
      type: 'object',
      properties: { sum: { type: 'number' } },
      required: ['sum'],
    },
  },
  {
    name: 'get_timestamp',
    description: 'Returns the current Unix time in seconds',
    inputSchema: {
      type: 'object',
      properties: { delay_ms: DELAY_PROPERTY },
      additionalProperties: false,
    },
    outputSchema: {
      type: 'object',
      properties: { timestamp: { type: 'integer' } },
      required: ['timestamp'],
    },
  },
  {
    name: 'error_test',
    description: 'Always fails: returns a tool result with isError true and the given message',
    inputSchema: {
      type: 'object',
      properties: {
        error_message: { type: 'string', description: 'Message of the failure' },
        delay_ms: DELAY_PROPERTY,
      },
      additionalProperties: false,
    },
  },
];

class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

// A result that is a tool execution error (isError: true), not a JSON-RPC error.
class ToolError extends Error {}

function jsonType(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v; // string, number, boolean, object
}

function matchesType(v, type) {
  switch (type) {
    case 'integer':
      return typeof v === 'number' && Number.isInteger(v);
    case 'array':
      return Array.isArray(v);
    case 'object':
      return jsonType(v) === 'object';
    case 'null':
      return v === null;
    default:
      return typeof v === type;
  }
}

// Checks `args` against the subset of JSON Schema our tools use; throws a ToolError naming the problem.
function validateArgs(tool, args) {
  const schema = tool.inputSchema;
  const bad = (what) => {
    throw new ToolError(`Invalid arguments for tool ${tool.name}: ${what}`);
  };
  for (const key of schema.required || []) {
    if (!(key in args)) bad(`missing required argument '${key}'`);
  }
  for (const [key, value] of Object.entries(args)) {
    const prop = schema.properties[key];
    if (!prop) {
      if (schema.additionalProperties === false) bad(`unknown argument '${key}'`);
      continue;
    }
    if (!matchesType(value, prop.type)) {
      bad(`argument '${key}' must be ${prop.type === 'integer' ? 'an' : 'a'} ${prop.type}, got ${jsonType(value)}`);
    }
    if (prop.minimum !== undefined && value < prop.minimum) {
      bad(`argument '${key}' must be >= ${prop.minimum}, got ${value}`);
    }
    if (prop.maximum !== undefined && value > prop.maximum) {
      bad(`argument '${key}' must be <= ${prop.maximum}, got ${value}`);
    }
  }
}

function textResult(text, extra) {
  return Object.assign({ content: [{ type: 'text', text }] }, extra || {});
}

const TOOL_IMPLS = {
  echo: (args) => textResult(`Echo: ${args.message}`),
  add: (args) => {
    const sum = args.a + args.b;
    if (!Number.isFinite(sum)) {
      return textResult(`Invalid arguments for tool add: ${args.a} + ${args.b} overflows`, { isError: true });
    }
    return textResult(`${args.a} + ${args.b} = ${sum}`, { structuredContent: { sum } });
  },
  get_timestamp: () => {
    const timestamp = Math.floor(Date.now() / 1000);
    return textResult(String(timestamp), { structuredContent: { timestamp } });
  },
  error_test: (args) =>
    textResult(args.error_message === undefined ? DEFAULT_ERROR_MESSAGE : args.error_message, {
      isError: true,
    }),
};

// Pending delayed tools/call answers, by JSON-encoded request id, so a cancellation can drop them.
const pendingCalls = new Map();
let initialized = false;
// The version initialize negotiated (legacy semantics), if any.
let legacyVersion = null;

function send(msg) {
  process.stdout.write(JSON.stringify(msg) + '\n');
}

function errorObject(id, code, message, data) {
  const error = { code, message };
  if (data !== undefined) error.data = data;
  return { jsonrpc: '2.0', id, error };
}

function sendError(id, code, message) {
  send(errorObject(id, code, message));
}

function negotiateVersion(params) {
  const asked = params && params.protocolVersion;
  if (LEGACY_VERSIONS.includes(asked)) return asked;
  log(`client asked for protocol ${JSON.stringify(asked)}; offering ${LATEST_LEGACY_VERSION}`);
  return LATEST_LEGACY_VERSION;
}

function unsupported(requested) {
  return new RpcError(
    UNSUPPORTED_PROTOCOL_VERSION,
    `Unsupported protocol version ${JSON.stringify(requested)} (supported: ${SUPPORTED_VERSIONS.join(', ')})`,
    { requested, supported: SUPPORTED_VERSIONS },
  );
}

function hasModernMeta(params) {
  return jsonType(params) === 'object' && jsonType(params._meta) === 'object' && META_PROTOCOL_VERSION in params._meta;
}

function listTools(params) {
  const pageSize = OPTIONS.pageSize || TOOLS.length;
  let start = 0;
  const cursor = params && params.cursor;
  if (cursor !== undefined) {
    const match = typeof cursor === 'string' && /^page-(\d+)$/.exec(cursor);
    start = match ? Number(match[1]) : NaN;
    if (!Number.isInteger(start) || start <= 0 || start >= TOOLS.length) {
      throw new RpcError(INVALID_PARAMS, `Invalid cursor ${JSON.stringify(cursor)}`);
    }
  }
  const end = Math.min(start + pageSize, TOOLS.length);
  const result = { tools: TOOLS.slice(start, end) };
  if (end < TOOLS.length) result.nextCursor = `page-${end}`;
  return result;
}

// The result of a tools/call and how long to wait before answering it.
function callTool(params) {
  if (typeof params.name !== 'string') {
    throw new RpcError(INVALID_PARAMS, 'Invalid params: tools/call needs params {name: string, arguments?: object}');
  }
  const tool = TOOLS.find((t) => t.name === params.name);
  if (!tool) throw new RpcError(INVALID_PARAMS, `Unknown tool: ${params.name}`);
  const args = params.arguments === undefined || params.arguments === null ? {} : params.arguments;
  if (jsonType(args) !== 'object') {
    throw new RpcError(INVALID_PARAMS, `Invalid params: tools/call arguments must be an object, got ${jsonType(args)}`);
  }
  try {
    validateArgs(tool, args);
  } catch (e) {
    if (e instanceof ToolError) return { result: textResult(e.message, { isError: true }), delayMs: 0 };
    throw e;
  }
  const result = TOOL_IMPLS[tool.name](args);
  const delayMs = args.delay_ms !== undefined ? args.delay_ms : OPTIONS.delayMs;
  return { result, delayMs };
}

// Sends `response` after delayMs unless cancelled first; reports progress when asked.
function answerLater(id, response, delayMs, progressToken) {
  const key = JSON.stringify(id);
  const started = Date.now();
  let ticker;
  if (progressToken !== undefined) {
    ticker = setInterval(() => {
      const progress = Math.min(Date.now() - started, delayMs);
      if (progress < delayMs) {
        send({
          jsonrpc: '2.0',
          method: 'notifications/progress',
          params: { progressToken, progress, total: delayMs, message: 'waiting for delay_ms' },
        });
      }
    }, PROGRESS_INTERVAL_MS);
  }
  const timer = setTimeout(() => {
    pendingCalls.delete(key);
    if (ticker) clearInterval(ticker);
    send(response);
  }, delayMs);
  pendingCalls.set(key, { timer, ticker });
}

function handleNotification(method, params) {
  if (method === 'notifications/initialized') {
    initialized = true;
    log('client initialized');
  } else if (method === 'notifications/cancelled') {
    const key = JSON.stringify(params && params.requestId);
    const pending = pendingCalls.get(key);
    if (pending !== undefined) {
      clearTimeout(pending.timer);
      if (pending.ticker) clearInterval(pending.ticker);
      pendingCalls.delete(key);
      log(`cancelled request ${key} (reason: ${params.reason || 'none given'})`);
    } else {
      log(`cancellation for request ${key}, which is not pending`);
    }
  } else {
    log(`ignoring notification ${method}`);
  }
}

// A request of the modern era: version and capabilities checked, result shaped.
function modernRequest(method, params) {
  const meta = params._meta;
  const requested = meta[META_PROTOCOL_VERSION];
  if (typeof requested !== 'string') {
    throw new RpcError(INVALID_PARAMS, `Invalid params: _meta["${META_PROTOCOL_VERSION}"] must be a string`);
  }
  if (!MODERN_VERSIONS.includes(requested)) throw unsupported(requested);
  if (jsonType(meta[META_CLIENT_CAPABILITIES]) !== 'object') {
    throw new RpcError(INVALID_PARAMS, `Invalid params: _meta["${META_CLIENT_CAPABILITIES}"] must be an object`);
  }
  let answer;
  switch (method) {
    case 'server/discover':
      answer = {
        result: {
          supportedVersions: SUPPORTED_VERSIONS,
          capabilities: { tools: { listChanged: false } },
          ttlMs: RESULT_TTL_MS,
          cacheScope: 'public',
        },
        delayMs: 0,
      };
      break;
    case 'tools/list':
      answer = { result: Object.assign(listTools(params), { ttlMs: RESULT_TTL_MS, cacheScope: 'public' }), delayMs: 0 };
      break;
    case 'tools/call':
      answer = callTool(params);
      break;
    default:
      throw new RpcError(METHOD_NOT_FOUND, `Method not found: ${method}`);
  }
  answer.result = Object.assign({}, answer.result, {
    resultType: 'complete',
    _meta: { [META_SERVER_INFO]: SERVER_INFO },
  });
  return answer;
}

// A request of the legacy era (after initialize, or without _meta).
function legacyRequest(method, params) {
  if (!SERVES_LEGACY) {
    throw unsupported(method === 'initialize' && typeof params.protocolVersion === 'string' ? params.protocolVersion : '');
  }
  switch (method) {
    case 'initialize': {
      const protocolVersion = negotiateVersion(params);
      legacyVersion = protocolVersion;
      log(`initialize: protocol ${protocolVersion}`);
      return {
        result: { protocolVersion, capabilities: { tools: { listChanged: false } }, serverInfo: SERVER_INFO },
        delayMs: 0,
      };
    }
    case 'ping':
      return { result: {}, delayMs: 0 };
    case 'tools/list':
      return { result: listTools(params), delayMs: 0 };
    case 'tools/call':
      if (!initialized) log('tools/call before notifications/initialized');
      return callTool(params);
    default:
      throw new RpcError(METHOD_NOT_FOUND, `Method not found: ${method}`);
  }
}

// The answer to one request: {response, delayMs, progressToken}.
function handleRequest(id, method, rawParams) {
  try {
    if (rawParams !== undefined && jsonType(rawParams) !== 'object') {
      throw new RpcError(INVALID_PARAMS, 'Invalid params: params must be an object');
    }
    const params = rawParams || {};
    const modern = SERVES_MODERN && method !== 'initialize' && hasModernMeta(params);
    const { result, delayMs } = modern ? modernRequest(method, params) : legacyRequest(method, params);
    const progressToken =
      jsonType(params._meta) === 'object' && ['string', 'number'].includes(typeof params._meta.progressToken)
        ? params._meta.progressToken
        : undefined;
    return { response: { jsonrpc: '2.0', id, result }, delayMs, progressToken };
  } catch (e) {
    if (e instanceof RpcError) return { response: errorObject(id, e.code, e.message, e.data), delayMs: 0 };
    log(`internal error: ${e.stack || e}`);
    return { response: errorObject(id, INTERNAL_ERROR, `Internal error: ${e.message}`), delayMs: 0 };
  }
}

function isValidId(id) {
  return typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id));
}

// Handles one message: returns {response, delayMs, progressToken} for a request, or null.
function handleMessage(msg) {
  const now = (response) => ({ response, delayMs: 0 });
  if (jsonType(msg) !== 'object') {
    return now(errorObject(null, INVALID_REQUEST, `Invalid Request: expected a JSON-RPC object, got ${jsonType(msg)}`));
  }
  const hasId = 'id' in msg;
  if (typeof msg.method !== 'string') {
    if ('result' in msg || 'error' in msg) {
      log(`ignoring response to id ${JSON.stringify(msg.id)} (this server sends no requests)`);
      return null;
    }
    return now(errorObject(hasId && isValidId(msg.id) ? msg.id : null, INVALID_REQUEST, 'Invalid Request: no method'));
  }
  if (msg.jsonrpc !== '2.0') {
    if (hasId) return now(errorObject(isValidId(msg.id) ? msg.id : null, INVALID_REQUEST, 'Invalid Request: jsonrpc must be "2.0"'));
    return null;
  }
  if (!hasId) {
    handleNotification(msg.method, msg.params);
    return null;
  }
  if (!isValidId(msg.id)) {
    return now(errorObject(null, INVALID_REQUEST, 'Invalid Request: id must be a string or a number'));
  }
  return handleRequest(msg.id, msg.method, msg.params);
}

// A JSON-RPC batch: only when 2025-03-26 was negotiated; answered together after the slowest delay.
function handleBatch(items) {
  if (legacyVersion !== BATCH_VERSION) {
    const why = legacyVersion
      ? `protocol ${legacyVersion} has no JSON-RPC batches`
      : `JSON-RPC batches need protocol ${BATCH_VERSION} negotiated by initialize`;
    sendError(null, INVALID_REQUEST, `Invalid Request: ${why}`);
    return;
  }
  if (items.length === 0) {
    sendError(null, INVALID_REQUEST, 'Invalid Request: empty batch');
    return;
  }
  const answers = items.map(handleMessage).filter((a) => a !== null);
  if (answers.length === 0) return;
  const delayMs = Math.max(...answers.map((a) => a.delayMs));
  const responses = answers.map((a) => a.response);
  if (delayMs > 0) setTimeout(() => send(responses), delayMs);
  else send(responses);
}

function dispatch(msg) {
  if (Array.isArray(msg)) {
    handleBatch(msg);
    return;
  }
  const answer = handleMessage(msg);
  if (answer === null) return;
  if (answer.delayMs <= 0) {
    send(answer.response);
    return;
  }
  if (pendingCalls.size >= MAX_IN_FLIGHT) {
    sendError(
      msg.id,
      INTERNAL_ERROR,
      `Too many requests in flight: this connection already has ${MAX_IN_FLIGHT} calls pending; wait for one to finish or open another connection`,
    );
    return;
  }
  answerLater(msg.id, answer.response, answer.delayMs, answer.progressToken);
}

function handleLine(line) {
  if (line.trim() === '') return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    sendError(null, PARSE_ERROR, `Parse error: ${e.message}`);
    return;
  }
  dispatch(msg);
}

let buffered = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffered += chunk;
  let newline;
  while ((newline = buffered.indexOf('\n')) !== -1) {
    const line = buffered.slice(0, newline);
    buffered = buffered.slice(newline + 1);
    handleLine(line);
  }
});
process.stdin.on('end', () => {
  if (buffered.trim() !== '') handleLine(buffered);
  log(`stdin closed; exiting with ${pendingCalls.size} delayed call(s) unanswered`);
  process.exit(0);
});
process.stdout.on('error', (e) => {
  log(`stdout error: ${e.message}; exiting`);
  process.exit(1);
});

log(`ready (protocols ${SUPPORTED_VERSIONS.join(', ')}; era ${OPTIONS.era}; delay ${OPTIONS.delayMs} ms)`);
