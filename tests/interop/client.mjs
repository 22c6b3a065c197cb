// A Node.js client of preimage built only from the .proto files, loaded at run time.
//
//   node client.mjs HOST:PORT MODEL.onnx [BIG_MODEL.onnx]
//
// Registers MODEL.onnx in chunks, predicts, runs an Invert stream to its end and
// checks every pattern (error within the tolerance, inside the schema's bounds,
// and the same output again through Predict), then cancels a second stream
// midway and confirms CANCELLED. BIG_MODEL.onnx (over gRPC's 4 MiB default
// message size) is registered in 1 MiB chunks and predicted once. Prints one
// JSON report on stdout; exits 1 with the reason on stderr when a check fails.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const definition = protoLoader.loadSync(["preimage/v1/registry.proto", "preimage/v1/inference.proto"], {
  includeDirs: [path.resolve(here, "..", "..", "protos")],
  keepCase: true, // field names exactly as in the .proto files
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true, // message.event / message.payload name the member that is set
});
const v1 = grpc.loadPackageDefinition(definition).preimage.v1;

const [address, modelPath, bigModelPath] = process.argv.slice(2);
if (!address || !modelPath) {
  console.error("usage: node client.mjs HOST:PORT MODEL.onnx [BIG_MODEL.onnx]");
  process.exit(2);
}
const options = { "grpc.max_receive_message_length": 64 * 1024 * 1024 };
const registry = new v1.RegistryService(address, grpc.credentials.createInsecure(), options);
const inference = new v1.InferenceService(address, grpc.credentials.createInsecure(), options);
const deadline = () => new Date(Date.now() + 120_000);

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

function unary(client, method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, { deadline: deadline() }, (err, response) => (err ? reject(err) : resolve(response))),
  );
}

// RegisterModel is client-streaming: the header first, then the bytes in chunks.
function register(name, bytes, chunkSize) {
  return new Promise((resolve, reject) => {
    const call = registry.RegisterModel({ deadline: deadline() }, (err, response) =>
      err ? reject(err) : resolve(response.model),
    );
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    call.write({ header: { name, size_bytes: bytes.length, sha256 } });
    for (let start = 0; start < bytes.length; start += chunkSize) {
      call.write({ chunk: bytes.subarray(start, start + chunkSize) });
    }
    call.end();
  });
}

const matrix = (rows) => ({ rows: rows.length, cols: rows[0].length, values: rows.flat() });
const unpack = (m) => Array.from({ length: m.rows }, (_, r) => m.values.slice(r * m.cols, (r + 1) * m.cols));

// Reads an Invert stream to its end: every PatternBatch, then the summary.
function invertAll(request) {
  return new Promise((resolve, reject) => {
    const patterns = { inputs: [], outputs: [], errors: [] };
    let summary = null;
    let messages = 0;
    const call = inference.Invert(request, { deadline: deadline() });
    call.on("data", (response) => {
      messages += 1;
      if (response.event === "patterns") {
        patterns.inputs.push(...unpack(response.patterns.inputs));
        patterns.outputs.push(...unpack(response.patterns.outputs));
        patterns.errors.push(...unpack(response.patterns.errors));
      } else if (response.event === "summary") {
        summary = response.summary;
      }
    });
    call.on("error", reject);
    call.on("end", () => resolve({ patterns, summary, messages }));
  });
}

// Opens a long Invert stream, cancels it after the first batch, and resolves with the status seen.
function invertThenCancel(request) {
  return new Promise((resolve, reject) => {
    let received = 0;
    const call = inference.Invert(request, { deadline: deadline() });
    call.on("data", () => {
      received += 1;
      if (received === 1) call.cancel();
    });
    call.on("error", (err) => resolve({ code: err.code, received }));
    call.on("end", () => reject(new Error("the stream ended instead of being cancelled")));
  });
}

async function main() {
  const report = {};
  const bytes = readFileSync(modelPath);
  const model = await register("node-example", bytes, 8 * 1024);
  report.ref = `${model.name}:${model.version}`;
  check(model.sha256 === createHash("sha256").update(bytes).digest("hex"), "sha256 round trip");
  check(Number(model.size_bytes) === bytes.length, "size round trip");
  const info = (await unary(registry, "GetModel", { model_ref: report.ref })).model;
  const width = info.input_width;
  // `optional` fields: proto-loader names the set member in a synthetic oneof (`_min`).
  const bound = (f, key, missing) => (f[`_${key}`] === key ? f[key] : missing);
  const lower = info.schema.inputs.map((f) => bound(f, "min", -Infinity));
  const upper = info.schema.inputs.map((f) => bound(f, "max", Infinity));
  check(lower.every(Number.isFinite) && upper.every(Number.isFinite), "the model's schema bounds every feature");

  const rows = [Array(width).fill(0.5), Array(width).fill(0.25)];
  const predicted = await unary(inference, "Predict", { model_ref: report.ref, inputs: matrix(rows) });
  report.predict = { inputs: rows, outputs: unpack(predicted.outputs) };

  const target = 7.0;
  const tolerance = 1e-3;
  const n = 64;
  const { patterns, summary, messages } = await invertAll({
    model_ref: report.ref,
    targets: [{ value: target }],
    count: n,
    tolerance,
    seed: 11,
    batch_size: 16,
  });
  check(summary !== null, "the stream ends with a summary");
  check(summary.status === "INVERT_STATUS_COMPLETE", `status ${summary.status}`);
  check(Number(summary.returned) === n && patterns.inputs.length === n, `returned ${summary.returned} of ${n}`);
  check(messages >= 2, "patterns arrive in several messages");
  patterns.inputs.forEach((x, i) => {
    check(x.length === width, `pattern ${i} has ${width} columns`);
    check(patterns.errors[i][0] <= tolerance, `pattern ${i} error ${patterns.errors[i][0]}`);
    check(Math.abs(patterns.outputs[i][0] - target) <= tolerance + 1e-6, `pattern ${i} output`);
    x.forEach((v, j) => check(v >= lower[j] && v <= upper[j], `pattern ${i} column ${j} = ${v} inside bounds`));
  });
  // Every pattern again, forwards: Predict must give the output Invert reported.
  const again = unpack(
    (await unary(inference, "Predict", { model_ref: report.ref, inputs: matrix(patterns.inputs) })).outputs,
  );
  again.forEach((y, i) => {
    check(Math.abs(y[0] - patterns.outputs[i][0]) <= 1e-5, `pattern ${i}: Predict ${y[0]} vs ${patterns.outputs[i][0]}`);
    check(Math.abs(y[0] - target) <= tolerance + 1e-5, `pattern ${i}: Predict ${y[0]} off target`);
  });
  report.invert = { ...patterns, summary: { status: summary.status, returned: Number(summary.returned) } };

  const cancelled = await invertThenCancel({
    model_ref: report.ref,
    targets: [{ value: target }],
    count: 2_000_000,
    batch_size: 16,
  });
  check(cancelled.code === grpc.status.CANCELLED, `cancel gave status ${cancelled.code}`);
  report.cancelled = { code: "CANCELLED", received: cancelled.received };

  if (bigModelPath) {
    const big = readFileSync(bigModelPath);
    check(big.length > 4 * 1024 * 1024, "the big model is over 4 MiB");
    const registered = await register("node-big", big, 1024 * 1024);
    const ref = `${registered.name}:${registered.version}`;
    const x = [Array(registered.input_width).fill(0.5)];
    const outputs = unpack((await unary(inference, "Predict", { model_ref: ref, inputs: matrix(x) })).outputs);
    report.big = { ref, inputs: x, outputs };
  }
  report.models = (await unary(registry, "ListModels", {})).models.map((m) => `${m.name}:${m.version}`);
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err.stack || String(err));
    process.exit(1);
  },
);
