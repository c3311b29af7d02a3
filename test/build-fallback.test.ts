import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ROOT } from './support/paths';

// binding.gyp is the documented build for users without CMake. Building it twice in CI would cost minutes,
// so this configures it in a scratch copy: gyp must resolve the same sources and libtorch paths as CMake.
function nodeGyp(): string | undefined {
  const npmDir = path.resolve(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  return fs.existsSync(npmDir) ? npmDir : undefined;
}

describe('binding.gyp fallback', () => {
  const gyp = nodeGyp();
  const maybe = gyp && fs.existsSync('/usr/include/node/node_api.h') ? test : test.skip;
  maybe('configures against the same sources and libtorch', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-gyp-'));
    try {
      for (const f of ['binding.gyp', 'package.json']) fs.copyFileSync(path.join(ROOT, f), path.join(dir, f));
      for (const d of ['native', 'scripts']) fs.cpSync(path.join(ROOT, d), path.join(dir, d), { recursive: true });
      fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
      execFileSync(process.execPath, [gyp!, 'configure', '--nodedir=/usr'], { cwd: dir, stdio: 'pipe' });
      const mk = fs.readFileSync(path.join(dir, 'build', 'roundtrip.target.mk'), 'utf8');
      const sources = execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'gyp-config.js'), 'sources'], { cwd: ROOT }).toString().trim().split(/\s+/);
      for (const s of sources) expect(mk).toContain(s.replace(/\.cc$/, '.o'));
      expect(mk).toMatch(/torch\/csrc\/api\/include/);
      expect(mk).toMatch(/-ltorch/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
