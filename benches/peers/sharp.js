// The sharp side of benches/vs_sharp.sh: a resize server as sites build one on sharp (the
// imgproxy-class peer of the bench), and the inputs both servers are fed.
//
//   node sharp.js serve ROOT PORT [exact]
//                                     GET /image/NAME?size=W[xH] -> ROOT/NAME resized, JPEG
//   node sharp.js prepare CORPUS DIR  make DIR/{sq,big,z}*.jpg (distinct originals, see below)
//
// The server does what imgedge does on a miss with a local origin: read the original, orient it
// upright, shrink-on-load + Lanczos3 to the width (never enlarging), sRGB, metadata stripped,
// JPEG Q80 4:2:0 baseline. `optimiseCoding` is turned off, sharp's one default that differs from
// imgedge's encoder (libjpeg-turbo's standard Huffman tables): both then write the same kind of
// file. sharp.concurrency(1) gives libvips one thread per image, as imgedge's resize pool does;
// the libvips operation cache is off (every input is new anyway).
//
// Shrink-on-load: sharp's default (`fastShrinkOnLoad: true`, as imgproxy does) decodes a JPEG at
// the largest power-of-two scale the shrink allows (3.5 → 1/2, 10 → 1/8), leaving the resampler
// as little as 1x; `exact` turns it off, which gives libvips thumbnail's rule (keep at least 2x
// for the resampler: 3.5 → full decode, 10 → 1/4). imgedge uses libvips' rule except between 3x
// and 4x, where it decodes at 1/2 (src/origin/transform/jpeg.rs `scale_eighths`). The bench runs
// both.
"use strict";
const fs = require("fs");
const fsp = require("fs/promises");
const http = require("http");
const path = require("path");
const sharp = require("sharp");

function serve(root, port, exact) {
  sharp.concurrency(1);
  sharp.cache(false);
  http
    .createServer(async (req, res) => {
      const fail = (status, why) => {
        res.writeHead(status, { "content-type": "text/plain" });
        res.end(why + "\n");
      };
      try {
        const u = new URL(req.url, "http://x");
        const name = /^\/image\/([A-Za-z0-9._-]+)$/.exec(u.pathname);
        const size = /^(\d+)x(\d*)$/.exec(u.searchParams.get("size") || "");
        if (!name || !size) return fail(400, "bad path or size");
        const input = await fsp.readFile(path.join(root, name[1]));
        const out = await sharp(input)
          .rotate()
          .resize({
            width: Number(size[1]),
            height: size[2] ? Number(size[2]) : null,
            fit: "inside",
            withoutEnlargement: true,
            fastShrinkOnLoad: !exact,
          })
          .jpeg({ quality: 80, chromaSubsampling: "4:2:0", optimiseCoding: false })
          .toBuffer();
        res.writeHead(200, { "content-type": "image/jpeg", "content-length": out.length });
        res.end(out);
      } catch (e) {
        fail(e.code === "ENOENT" ? 404 : 500, String(e.message || e));
      }
    })
    .listen(port, "127.0.0.1");
}

// Distinct originals (different crops, so no server can share work between two of them), made
// once from the repo's corpus and kept between runs:
//   sq000..sq299.jpg  1414x1414 (2 MP; shrink 3.5 to 400 px: a full decode for both servers)
//   big000..big095.jpg 4000x3000 (12 MP) crops of a 13.4 MP camera photo
//   z00..z59.jpg      1790x1119 (2 MP) photos: the Zipf trace's 60 ids
async function prepare(corpus, dir) {
  fs.mkdirSync(dir, { recursive: true });
  const jobs = [];
  const kite = await sharp(path.join(corpus, "jpeg-baseline-2560x1600.jpg"))
    .raw()
    .toBuffer({ resolveWithObject: true });
  const kiteRaw = { raw: kite.info };
  for (let i = 0; i < 300; i++) {
    jobs.push(() =>
      sharp(kite.data, kiteRaw)
        .extract({ left: i * 3, top: 0, width: 1600, height: 1600 })
        .resize(1414, 1414, { kernel: "lanczos3" })
        .jpeg({ quality: 90 })
        .toFile(path.join(dir, `sq${String(i).padStart(3, "0")}.jpg`)),
    );
  }
  for (let i = 0; i < 60; i++) {
    jobs.push(() =>
      sharp(kite.data, kiteRaw)
        .extract({ left: (i % 10) * 32, top: Math.floor(i / 10) * 40, width: 2240, height: 1400 })
        .resize(1790, 1119, { kernel: "lanczos3" })
        .jpeg({ quality: 90 })
        .toFile(path.join(dir, `z${String(i).padStart(2, "0")}.jpg`)),
    );
  }
  const big = await sharp(path.join(corpus, "jpeg-large-13.4mp-4224x3168.jpg"))
    .raw()
    .toBuffer({ resolveWithObject: true });
  for (let i = 0; i < 96; i++) {
    jobs.push(() =>
      sharp(big.data, { raw: big.info })
        .extract({ left: (i % 12) * 20, top: Math.floor(i / 12) * 21, width: 4000, height: 3000 })
        .jpeg({ quality: 90 })
        .toFile(path.join(dir, `big${String(i).padStart(3, "0")}.jpg`)),
    );
  }
  // Two at a time: the machine may have two cores.
  const next = async () => {
    for (let job = jobs.shift(); job; job = jobs.shift()) await job();
  };
  await Promise.all([next(), next()]);
}

const [cmd, a, b] = process.argv.slice(2);
if (cmd === "serve") serve(a, Number(b), process.argv[5] === "exact");
else if (cmd === "prepare")
  prepare(a, b).catch((e) => {
    console.error(e);
    process.exit(1);
  });
else {
  console.error("usage: node sharp.js serve ROOT PORT [exact] | prepare CORPUS DIR");
  process.exit(2);
}
