"""An independent PyTorch reference: the official MRL ResNet, no torchvision.

Written from torchvision's ResNet v1.5, RAIVNLab/MRL's `MRL_Linear_Layer` /
`FixedFeatureLayer` heads and FFCV's `BlurPoolConv2d`, so its state_dict has
the official key layout. Used by the import tests and to write stand-in
checkpoints for the import notebook's headless run.
"""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int):
    super().__init__()
    out = planes * self.expansion
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = None
    if stride != 1 or inplanes != out:
      self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, planes, 1, stride, bias=False),
          nn.BatchNorm2d(planes))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class MRLLinear(nn.Module):
  """Official MRL_Linear_Layer: MRL (one Linear per dim) or MRL-E."""

  def __init__(self, nesting, num_classes: int, efficient: bool):
    super().__init__()
    self.nesting, self.efficient = list(nesting), efficient
    for i, m in enumerate(self.nesting[:1] if efficient else self.nesting):
      m = self.nesting[-1] if efficient else m
      setattr(self, f"nesting_classifier_{i}", nn.Linear(m, num_classes))

  def forward(self, x):
    if self.efficient:
      head = self.nesting_classifier_0
      return torch.stack([x[:, :m] @ head.weight[:, :m].t() + head.bias
                          for m in self.nesting])
    return torch.stack([getattr(self, f"nesting_classifier_{i}")(x[:, :m])
                        for i, m in enumerate(self.nesting)])


class FixedFeature(nn.Linear):
  """Official FixedFeatureLayer (FF-k): a Linear on the first k features."""

  def forward(self, x):
    return super().forward(x[:, :self.in_features])[None]


class BlurPoolConv2d(nn.Module):
  """FFCV's BlurPoolConv2d: fixed depthwise blur, then the strided conv."""

  def __init__(self, conv: nn.Conv2d):
    super().__init__()
    default = torch.tensor([[[[1, 2, 1], [2, 4, 2], [1, 2, 1]]]]) / 16.0
    self.conv = conv
    self.register_buffer("blur_filter",
                         default.repeat(conv.in_channels, 1, 1, 1))

  def forward(self, x):
    blurred = F.conv2d(x, self.blur_filter, stride=1, padding=(1, 1),
                       groups=self.conv.in_channels, bias=None)
    return self.conv(blurred)


def apply_blurpool(module: nn.Module) -> None:
  """FFCV's apply_blurpool: wraps strided convs with >= 16 input channels."""
  for name, child in module.named_children():
    if isinstance(child, nn.Conv2d) and (max(child.stride) > 1 and
                                         child.in_channels >= 16):
      setattr(module, name, BlurPoolConv2d(child))
    else:
      apply_blurpool(child)


class ResNet(nn.Module):
  """torchvision ResNet v1.5 trunk with an MRL / MRL-E / FF-k head `fc`.

  forward(images [B, 3, H, W]) -> (logits [G, B, C], embedding [B, d]).
  """

  def __init__(self, block, layers, head: str, nesting, num_classes: int,
               width: int = 64, ff_dim: int | None = None):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    inplanes = width
    for i, n in enumerate(layers):
      blocks = []
      for j in range(n):
        blocks.append(block(inplanes, width * 2**i,
                            2 if i > 0 and j == 0 else 1))
        inplanes = width * 2**i * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    if head == "ff":
      self.fc = FixedFeature(ff_dim, num_classes)
    else:
      self.fc = MRLLinear(nesting, num_classes, efficient=head == "mrl_e")

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.max_pool2d(x, 3, 2, 1)
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
    z = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return self.fc(z), z


def build(name: str, head: str, nesting, num_classes: int, seed: int,
          blurpool: bool = False, ff_dim: int | None = None) -> ResNet:
  """A random ResNet ("resnet50" or "resnet_mu") in eval mode, with random
  BatchNorm statistics and affine parameters so BN is not the identity."""
  torch.manual_seed(seed)
  if name == "resnet50":
    model = ResNet(Bottleneck, (3, 4, 6, 3), head, nesting, num_classes,
                   ff_dim=ff_dim)
  else:  # resnet_mu: basic blocks, one per stage, width 8 (d = 64)
    model = ResNet(BasicBlock, (1, 1, 1, 1), head, nesting, num_classes,
                   width=8, ff_dim=ff_dim)
  if blurpool:
    apply_blurpool(model)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=gen))
        m.bias.copy_(0.1 * torch.randn(c, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
      if isinstance(m, nn.Linear):
        m.bias.copy_(torch.randn(m.out_features, generator=gen))
  return model.eval()


def run(model: ResNet, images_nhwc: np.ndarray) -> tuple[np.ndarray,
                                                         np.ndarray]:
  """(logits [G, B, C], embedding [B, d]) in float32 for NHWC images."""
  with torch.no_grad():
    logits, z = model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))
  return logits.numpy(), z.numpy()
