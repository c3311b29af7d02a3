import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ldmLayoutFromConfigs, ldmRenames, ldmUnetKey, LDM_TEXT_PREFIX } from '../lib/models/sd/ldm-keys';
import { UNet } from '../lib/models/sd/unet';
import { VAE } from '../lib/models/sd/vae';
import { disposeAll, noGrad, Tensor } from '../lib/runtime/tensor';
import { convertToSafetensors } from '../lib/weights/convert';
import { loadSafetensors, readSafetensorsHeader } from '../lib/weights/safetensors';
import { CHECKPOINTS } from './support/paths';

jest.setTimeout(180000);
const DIR = path.join(CHECKPOINTS, 'sd-ldm');
const readJson = (f: string) => JSON.parse(fs.readFileSync(path.join(DIR, f), 'utf8'));

function tolerance(caseJson: any, name: string): [number, number] {
  const spec = caseJson.tensors[name];
  return [spec.recommended_atol, spec.recommended_rtol ?? 1e-4];
}

test('LDM → diffusers names equal the published mapping for every key', () => {
  const keys = readSafetensorsHeader(path.join(DIR, 'model.safetensors')).tensors.map((t) => t.name);
  const layout = ldmLayoutFromConfigs(readJson('unet_config.json'), readJson('vae_config.json'));
  const r = ldmRenames(keys, layout);
  expect(r.unknown).toEqual([]);
  const mapping = readJson('mapping.json').entries as { ldm: string; component: string; diffusers: string | null }[];
  expect(mapping.length).toBe(keys.length);
  for (const e of mapping) {
    if (e.diffusers === null) {
      expect(r.dropped).toContain(e.ldm);
    } else if (e.component === 'unet') {
      expect(r.unet.renames[e.ldm.slice(r.unet.prefix.length)]).toBe(e.diffusers);
    } else if (e.component === 'vae') {
      expect(r.vae.renames[e.ldm.slice(r.vae.prefix.length)]).toBe(e.diffusers);
    } else {
      expect(e.ldm.startsWith(LDM_TEXT_PREFIX)).toBe(true);
      expect(r.textEncoder.renames[e.ldm.slice(LDM_TEXT_PREFIX.length)]).toBe(e.diffusers);
    }
  }
});

/** The README's diffusers → LDM numbering, written independently, to check other layers_per_block values. */
function diffusersToLdm(key: string, n: number, upTypes: string[]): string {
  const res = (s: string) =>
    s.replace('norm1', 'in_layers.0').replace('conv1', 'in_layers.2').replace('time_emb_proj', 'emb_layers.1').replace('norm2', 'out_layers.0').replace('conv2', 'out_layers.3').replace('conv_shortcut', 'skip_connection');
  let m: RegExpExecArray | null;
  if ((m = /^down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$/.exec(key))) return `input_blocks.${(n + 1) * +m[1] + +m[2] + 1}.0.${res(m[3])}`;
  if ((m = /^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$/.exec(key))) return `input_blocks.${(n + 1) * +m[1] + +m[2] + 1}.1.${m[3]}`;
  if ((m = /^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$/.exec(key))) return `input_blocks.${(n + 1) * (+m[1] + 1)}.0.op.${m[2]}`;
  if ((m = /^up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$/.exec(key))) return `output_blocks.${(n + 1) * +m[1] + +m[2]}.0.${res(m[3])}`;
  if ((m = /^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$/.exec(key))) return `output_blocks.${(n + 1) * +m[1] + +m[2]}.1.${m[3]}`;
  if ((m = /^up_blocks\.(\d+)\.upsamplers\.0\.(.+)$/.exec(key)))
    return `output_blocks.${(n + 1) * +m[1] + n}.${upTypes[+m[1]] === 'CrossAttnUpBlock2D' ? 2 : 1}.${m[2]}`;
  if ((m = /^mid_block\.resnets\.([01])\.(.+)$/.exec(key))) return `middle_block.${m[1] === '0' ? 0 : 2}.${res(m[2])}`;
  if ((m = /^mid_block\.attentions\.0\.(.+)$/.exec(key))) return `middle_block.1.${m[1]}`;
  if ((m = /^time_embedding\.linear_([12])\.(.+)$/.exec(key))) return `time_embed.${m[1] === '1' ? 0 : 2}.${m[2]}`;
  if ((m = /^conv_in\.(.+)$/.exec(key))) return `input_blocks.0.0.${m[1]}`;
  if ((m = /^conv_norm_out\.(.+)$/.exec(key))) return `out.0.${m[1]}`;
  if ((m = /^conv_out\.(.+)$/.exec(key))) return `out.2.${m[1]}`;
  throw new Error(`no LDM name for ${key}`);
}

test.each([1, 3])('UNet numbering round-trips for layers_per_block %i (3 levels)', async (n) => {
  const cfg = { ...readJson('unet_config.json'), layers_per_block: n, block_out_channels: [16, 16, 32] };
  cfg.down_block_types = ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'];
  cfg.up_block_types = ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'];
  const unet = await UNet.create(cfg);
  try {
    const layout = ldmLayoutFromConfigs(cfg, { block_out_channels: [1] });
    const names = unet.model.parameters().map((p) => p.name);
    for (const name of names) expect(ldmUnetKey(diffusersToLdm(name, n, cfg.up_block_types), layout)).toBe(name);
  } finally {
    unet.dispose();
  }
});

async function loadLdm(file: string, unet: UNet, vae: VAE) {
  const keys = readSafetensorsHeader(file).tensors.map((t) => t.name);
  const r = ldmRenames(keys, ldmLayoutFromConfigs(unet.config, vae.config));
  await unet.model.loadWeights([file], { prefix: r.unet.prefix, renames: r.unet.renames });
  // LDM stores the VAE attention projections as 1×1 convs.
  await vae.model.loadWeights([file], { prefix: r.vae.prefix, renames: r.vae.renames, reshapeSingletons: true });
}

test('LDM single file (.safetensors and .ckpt) reproduces the UNet and VAE outputs, and the partial merge', async () => {
  const caseJson = readJson('case.json');
  const io = await loadSafetensors(path.join(DIR, 'io.safetensors'));
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sd-ldm-'));
  const models: { dispose(): void }[] = [];
  try {
    const ckptAsSafetensors = path.join(tmp, 'model.safetensors');
    await convertToSafetensors(path.join(DIR, 'model.ckpt'), ckptAsSafetensors);
    for (const file of [path.join(DIR, 'model.safetensors'), ckptAsSafetensors]) {
      const unet = await UNet.create(readJson('unet_config.json'));
      const vae = await VAE.create(readJson('vae_config.json'));
      models.push(unet, vae);
      await loadLdm(file, unet, vae);
      await noGrad(async () => {
        const check = (mine: Tensor, name: string) => {
          const [atol, rtol] = tolerance(caseJson, name);
          expect({ name, ...mine.compare(io[name], atol, rtol) }).toMatchObject({ name, bad: 0 });
        };
        const out = await unet.forward(io['input.sample'], io['input.timesteps'], io['output.text.last_hidden_state']);
        check(out.sample, 'output.unet.sample');
        const post = await vae.encode(io['input.image'], { seed: 0 });
        check(post.mean, 'output.vae.latent_mean');
        check(post.logvar, 'output.vae.latent_logvar');
        check((await vae.decode(post.mean)).image, 'output.vae.decoded_mean');

        // DalleFlamingo's unet.pth: diffusers-named attn2.to_q weights merged over the loaded UNet.
        const partial = path.join(tmp, 'partial.safetensors');
        await convertToSafetensors(path.join(DIR, 'partial-unet-xattn-q.pth'), partial);
        const report = await unet.model.loadWeights([partial], { partial: true });
        expect(report.loaded).toBe(unet.model.parameters().filter((p) => /\.attn2\.to_q\.weight$/.test(p.name)).length);
        const merged = await unet.forward(io['input.sample'], io['input.timesteps'], io['output.text.last_hidden_state']);
        check(merged.sample, 'output.unet_merged_partial.sample');
      });
    }
  } finally {
    models.forEach((m) => m.dispose());
    disposeAll(io);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
