// Puts the OHIF viewer's prebuilt dist/ (the @ohif/app package pinned in package.json "ohif") in
// ./ohif-app (git-ignored), checking the tarball against the pinned sha512 integrity. Not under
// node_modules: `npm ci` and `npm install` would remove it there as extraneous.
//
// Why not a dependency in package.json: npm would then install @ohif/app's ~40 build-time
// dependencies (React, webpack loaders, its own @ohif/* packages), which the built dist/ does not
// need, and some of which are not on every registry mirror. `npm pack` fetches the one tarball,
// through npm's own client, registry configuration and cache.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const { ohif } = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8'));
const target = join(here, 'ohif-app');

function installedVersion() {
  const manifest = join(target, 'package.json');
  if (!existsSync(manifest) || !existsSync(join(target, 'dist', 'index.html'))) return null;
  return JSON.parse(readFileSync(manifest, 'utf8')).version;
}

if (installedVersion() === ohif.version) {
  console.log(`${ohif.package}@${ohif.version} already installed`);
  process.exit(0);
}

// Next to the target, so that the final rename stays on one file system.
const work = mkdtempSync(join(here, '.ohif-download-'));
try {
  const spec = `${ohif.package}@${ohif.version}`;
  const [packed] = JSON.parse(execFileSync('npm', ['pack', spec, '--json', '--pack-destination', work],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }));
  const tarball = join(work, packed.filename);
  const digest = `sha512-${createHash('sha512').update(readFileSync(tarball)).digest('base64')}`;
  if (digest !== ohif.integrity) {
    throw new Error(`${spec}: integrity ${digest} differs from the pinned ${ohif.integrity}`);
  }
  const unpacked = join(work, 'unpacked');
  mkdirSync(unpacked);
  execFileSync('tar', ['-xzf', tarball, '-C', unpacked, '--strip-components=1']);
  rmSync(target, { recursive: true, force: true });
  renameSync(unpacked, target);
  console.log(`installed ${spec} into ${target}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
