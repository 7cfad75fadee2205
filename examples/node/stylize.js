#!/usr/bin/env node
// A Node.js client of styletx.v1.StyleTransfer: streams one Stylize job, prints its progress and saves the result.
//
//   node stylize.js --server localhost:50051 CONTENT STYLE [STYLE ...] -o out.png [--size 512] [--iterations N]
//                   [--token TOKEN | $STYLETX_TOKEN] [--ca ca.crt]
//
// The API is read at run time from proto/styletx/v1/styletx.proto (@grpc/proto-loader), so this file never goes
// stale against generated code: fields are the proto's names (keepCase), 64-bit integers arrive as strings, enums
// as their names, and a oneof's name tells which of its fields is set (`event.event === "progress"`).
// Exit status: 0 saved, 1 the server refused or failed the job (its gRPC status is printed), 2 bad arguments.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const FORMATS = { ".png": "OUTPUT_FORMAT_PNG", ".jpg": "OUTPUT_FORMAT_JPEG", ".jpeg": "OUTPUT_FORMAT_JPEG",
                  ".tif": "OUTPUT_FORMAT_TIFF16", ".tiff": "OUTPUT_FORMAT_TIFF16" };

function loadService() {
  const definition = protoLoader.loadSync("styletx/v1/styletx.proto", {
    includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, defaults: false, oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).styletx.v1.StyleTransfer;
}

function parseCommandLine(argv) {
  const { values, positionals } = parseArgs({
    args: argv, allowPositionals: true, options: {
      server: { type: "string", default: "localhost:50051" },
      output: { type: "string", short: "o" },
      size: { type: "string" },
      iterations: { type: "string" },
      seed: { type: "string" },
      token: { type: "string", default: process.env.STYLETX_TOKEN || "" },
      ca: { type: "string" },
    },
  });
  if (positionals.length < 2 || !values.output) {
    throw new Error("usage: stylize.js --server HOST:PORT CONTENT STYLE [STYLE ...] -o OUT.png");
  }
  const format = FORMATS[path.extname(values.output).toLowerCase()];
  if (!format) throw new Error(`-o ${values.output}: unknown extension (${Object.keys(FORMATS).join(", ")})`);
  return { ...values, format, content: positionals[0], styles: positionals.slice(1) };
}

function buildRequest(args) {
  const params = {};
  for (const name of ["size", "iterations", "seed"]) {
    if (args[name] !== undefined) params[name] = Number(args[name]);
  }
  return {
    content: fs.readFileSync(args.content),
    styles: args.styles.map((file) => ({ image: fs.readFileSync(file) })),
    params,
    output_format: args.format,
  };
}

function credentials(args) {
  return args.ca ? grpc.credentials.createSsl(fs.readFileSync(args.ca)) : grpc.credentials.createInsecure();
}

// The bearer token travels in each call's metadata, as the Python SDK sends it.
function metadata(args) {
  const result = new grpc.Metadata();
  if (args.token) result.set("authorization", `Bearer ${args.token}`);
  return result;
}

// Streams the job; resolves with the result's bytes once Completed arrives and its sha256 matches.
function stylize(client, request, md) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    const call = client.Stylize(request, md);
    call.on("data", (event) => {
      switch (event.event) {
        case "accepted":
          process.stderr.write(`job ${event.job_id} accepted, queue position ${event.accepted.queue_position || 0}\n`);
          break;
        case "progress": {
          const p = event.progress;
          process.stderr.write(`iteration ${p.iteration}/${p.total_iterations} scale ${(p.scale_index || 0) + 1}/` +
                               `${p.scale_count} loss ${Number(p.loss).toPrecision(4)}\n`);
          break;
        }
        case "result_chunk":
          chunks.push({ offset: Number(event.result_chunk.offset || 0), data: event.result_chunk.data });
          break;
        case "completed": {
          const data = Buffer.concat(chunks.sort((a, b) => a.offset - b.offset).map((c) => c.data));
          const digest = crypto.createHash("sha256").update(data).digest("hex");
          if (digest !== event.completed.result_sha256) {
            reject(new Error(`result sha256 ${digest} != ${event.completed.result_sha256}`));
          } else {
            resolve({ data, completed: event.completed });
          }
          break;
        }
        default:
          break;
      }
    });
    call.on("error", reject);
  });
}

async function main(argv) {
  let args;
  try {
    args = parseCommandLine(argv);
  } catch (error) {
    process.stderr.write(`${error.message}\n`);
    return 2;
  }
  const StyleTransfer = loadService();
  const client = new StyleTransfer(args.server, credentials(args));
  try {
    const { data, completed } = await stylize(client, buildRequest(args), metadata(args));
    fs.writeFileSync(args.output, data);
    process.stdout.write(`${args.output}: ${data.length} bytes, ${completed.iterations} iterations, ` +
                         `seed ${completed.seed}\n`);
    return 0;
  } catch (error) {
    const code = error.code !== undefined ? `${grpc.status[error.code]}: ` : "";
    process.stderr.write(`error: ${code}${error.details || error.message}\n`);
    return 1;
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then((status) => { process.exitCode = status; });
