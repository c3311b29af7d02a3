import { UNet } from '../lib/models/sd/unet';
import { VAE } from '../lib/models/sd/vae';

jest.setTimeout(300000);

// CompVis/stable-diffusion-v1-4 unet/config.json and vae/config.json (published values; other keys default).
const V14_UNET = {
  _class_name: 'UNet2DConditionModel',
  act_fn: 'silu',
  attention_head_dim: 8,
  block_out_channels: [320, 640, 1280, 1280],
  center_input_sample: false,
  cross_attention_dim: 768,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  downsample_padding: 1,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 2,
  mid_block_scale_factor: 1,
  norm_eps: 1e-5,
  norm_num_groups: 32,
  out_channels: 4,
  sample_size: 64,
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
};
const V14_VAE = {
  _class_name: 'AutoencoderKL',
  act_fn: 'silu',
  block_out_channels: [128, 256, 512, 512],
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  in_channels: 3,
  latent_channels: 4,
  layers_per_block: 2,
  norm_num_groups: 32,
  out_channels: 3,
  sample_size: 512,
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
};

test('SD v1.4 UNet has exactly 859,520,964 parameters', async () => {
  const unet = await UNet.create(V14_UNET);
  try {
    expect(unet.model.parameterCount()).toBe(859520964);
    // Published names exist with their published shapes.
    const p = Object.fromEntries(unet.model.parameters().map((x) => [x.name, x.shape]));
    expect(p['down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight']).toEqual([320, 768]);
    expect(p['down_blocks.0.attentions.0.proj_in.weight']).toEqual([320, 320, 1, 1]);
    expect(p['up_blocks.0.upsamplers.0.conv.weight']).toEqual([1280, 1280, 3, 3]);
  } finally {
    unet.dispose();
  }
});

test('SD v1.4 VAE has exactly 83,653,863 parameters', async () => {
  const vae = await VAE.create(V14_VAE);
  try {
    expect(vae.model.parameterCount()).toBe(83653863);
    expect(vae.scalingFactor).toBe(0.18215);
  } finally {
    vae.dispose();
  }
});
