#!/usr/bin/env node
// ukload's MCP test server: newline-delimited JSON-RPC 2.0 on stdio.
//
// No npm dependencies. stdout carries protocol messages only; every log line goes
// to stderr. Follows the MCP lifecycle (initialize with version negotiation,
// notifications/initialized, ping) and never answers a notification.
//
// Tools (schemas in tools/list):
//   echo {message: string}                -> text "Echo: <message>"
//   add {a: number, b: number}            -> text "<a> + <b> = <sum>", structuredContent {sum}
//   get_timestamp {}                      -> Unix time in seconds, as text and structuredContent {timestamp}
//   error_test {error_message?: string}   -> a tool failure: result with isError: true and the message
// Every tool also accepts `delay_ms` (integer 0..=60000): answer only after that long.
//
// Errors: unknown tool or arguments breaking the schema -> -32602 naming the problem;
// unparsable JSON -> -32700 with id null; not a JSON-RPC request -> -32600;
// unknown method -> -32601.
//
// Options:
//   --delay-ms N    delay every tools/call by N ms (a `delay_ms` argument overrides it)
//   --page-size N   split tools/list into pages of N tools, linked by nextCursor
//
// A slow call never blocks other calls (timers, not busy waits), and
// notifications/cancelled {requestId} drops the pending answer to that request.
'use strict';

const SUPPORTED_VERSIONS = ['2024-11-05', '2025-03-26', '2025-06-18', '2025-11-25'];
const LATEST_VERSION = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.length - 1];
const SERVER_INFO = { name: 'ukload-echo-server', version: '1.0.0' };
const DEFAULT_ERROR_MESSAGE = 'Intentional error for testing';

const PARSE_ERROR = -32700;
const INVALID_REQUEST = -32600;
const METHOD_NOT_FOUND = -32601;
const INVALID_PARAMS = -32602;

function log(msg) {
  process.stderr.write(`[echo_server ${process.pid}] ${msg}\n`);
}

function usage(msg) {
  log(`${msg}\nusage: echo_server.js [--delay-ms N] [--page-size N]`);
  process.exit(2);
}

function parseOptions(argv) {
  const opts = { delayMs: 0, pageSize: 0 };
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
    else usage(`unknown option ${JSON.stringify(arg)}`);
  }
  return opts;
}

const OPTIONS = parseOptions(process.argv.slice(2));

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
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

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

// Checks `args` against the subset of JSON Schema our tools use; throws -32602 naming the problem.
function validateArgs(tool, args) {
  const schema = tool.inputSchema;
  const bad = (what) => {
    throw new RpcError(INVALID_PARAMS, `Invalid arguments for tool ${tool.name}: ${what}`);
  };
  if (jsonType(args) !== 'object') bad(`arguments must be an object, got ${jsonType(args)}`);
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

function send(msg) {
  process.stdout.write(JSON.stringify(msg) + '\n');
}

function sendResult(id, result) {
  send({ jsonrpc: '2.0', id, result });
}

function sendError(id, code, message) {
  send({ jsonrpc: '2.0', id, error: { code, message } });
}

function negotiateVersion(params) {
  const asked = params && params.protocolVersion;
  if (SUPPORTED_VERSIONS.includes(asked)) return asked;
  log(`client asked for protocol ${JSON.stringify(asked)}; offering ${LATEST_VERSION}`);
  return LATEST_VERSION;
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

// Answers a tools/call now, or later when a delay was asked for.
function callTool(id, params) {
  if (jsonType(params) !== 'object' || typeof params.name !== 'string') {
    throw new RpcError(INVALID_PARAMS, 'tools/call needs params {name: string, arguments?: object}');
  }
  const tool = TOOLS.find((t) => t.name === params.name);
  if (!tool) throw new RpcError(INVALID_PARAMS, `Unknown tool: ${params.name}`);
  const args = params.arguments === undefined ? {} : params.arguments;
  validateArgs(tool, args);
  const result = TOOL_IMPLS[tool.name](args);
  const delayMs = args.delay_ms !== undefined ? args.delay_ms : OPTIONS.delayMs;
  if (delayMs <= 0) {
    sendResult(id, result);
    return;
  }
  const key = JSON.stringify(id);
  const timer = setTimeout(() => {
    pendingCalls.delete(key);
    sendResult(id, result);
  }, delayMs);
  pendingCalls.set(key, timer);
}

function handleNotification(method, params) {
  if (method === 'notifications/initialized') {
    initialized = true;
    log('client initialized');
  } else if (method === 'notifications/cancelled') {
    const key = JSON.stringify(params && params.requestId);
    const timer = pendingCalls.get(key);
    if (timer !== undefined) {
      clearTimeout(timer);
      pendingCalls.delete(key);
      log(`cancelled request ${key} (reason: ${params.reason || 'none given'})`);
    } else {
      log(`cancellation for request ${key}, which is not pending`);
    }
  } else {
    log(`ignoring notification ${method}`);
  }
}

function handleRequest(id, method, params) {
  switch (method) {
    case 'initialize': {
      const protocolVersion = negotiateVersion(params);
      log(`initialize: protocol ${protocolVersion}`);
      sendResult(id, {
        protocolVersion,
        capabilities: { tools: { listChanged: false } },
        serverInfo: SERVER_INFO,
      });
      return;
    }
    case 'ping':
      sendResult(id, {});
      return;
    case 'tools/list':
      sendResult(id, listTools(params));
      return;
    case 'tools/call':
      if (!initialized) log('tools/call before notifications/initialized');
      callTool(id, params);
      return;
    default:
      throw new RpcError(METHOD_NOT_FOUND, `Method not found: ${method}`);
  }
}

function isValidId(id) {
  return typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id));
}

function handleMessage(msg) {
  if (jsonType(msg) !== 'object') {
    sendError(null, INVALID_REQUEST, `Invalid Request: expected a JSON-RPC object, got ${jsonType(msg)}`);
    return;
  }
  const hasId = 'id' in msg;
  if (typeof msg.method !== 'string') {
    if ('result' in msg || 'error' in msg) {
      log(`ignoring response to id ${JSON.stringify(msg.id)} (this server sends no requests)`);
      return;
    }
    sendError(hasId && isValidId(msg.id) ? msg.id : null, INVALID_REQUEST, 'Invalid Request: no method');
    return;
  }
  if (msg.jsonrpc !== '2.0') {
    if (hasId) sendError(isValidId(msg.id) ? msg.id : null, INVALID_REQUEST, 'Invalid Request: jsonrpc must be "2.0"');
    return;
  }
  if (!hasId) {
    handleNotification(msg.method, msg.params);
    return;
  }
  if (!isValidId(msg.id)) {
    sendError(null, INVALID_REQUEST, 'Invalid Request: id must be a string or a number');
    return;
  }
  try {
    handleRequest(msg.id, msg.method, msg.params);
  } catch (e) {
    if (e instanceof RpcError) sendError(msg.id, e.code, e.message);
    else {
      log(`internal error: ${e.stack || e}`);
      sendError(msg.id, -32603, `Internal error: ${e.message}`);
    }
  }
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
  handleMessage(msg);
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

log(`ready (protocols ${SUPPORTED_VERSIONS.join(', ')}; delay ${OPTIONS.delayMs} ms)`);
