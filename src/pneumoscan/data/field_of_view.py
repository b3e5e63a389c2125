"""A canonical field of view: every film cropped to the same anatomy before the network sees it (issue 19).

In the Kermany training set the framing carries the label: pneumonia films are tightly framed, normal films
show shoulders, neck and arms. A network learns "how much of the frame the lungs fill" instead of what is in
the lungs, and a normal film zoomed in reads as pneumonia. Cropping every film to its own lung fields takes
that cue away: a film zoomed in or out, or shrunk onto a border, is cropped back to nearly the same box.

Two modes, both stored in the bundle (Preprocess.fov) and applied by every tool:

- `trim`: cut away padding, i.e. leading/trailing rows and columns that are flat (one grey level) or repeat
  their inner neighbour (edge replication). A film shrunk onto black, grey or replicated edges comes back
  to the film itself.
- `lungs`: trim, then crop to a box around the two lung fields, found by a classical method: the dark (air)
  regions of the film that are not connected to the film's border (the air around the body is), extended
  by a margin and made left-right symmetric about the body's centre (a white-out lung must not shrink it).

Everything is plain tensor arithmetic with fixed shapes (pooling, comparisons, cumulative sums, a fixed
number of geodesic dilations, and one bilinear resampling as two matrix products), so the same code runs in training
batches, in eager inference and inside the exported ONNX graph, with no connected-component library.
"""

import torch
import torch.nn.functional as F

from pneumoscan.data.modes import FOV_MODES, PORTABLE_OPS

ANALYSIS_SIZE = 64  # side at which the box is found: the lungs span tens of pixels at this size
FLAT_LEVELS = 2.0  # a padding row: its pixels vary (std) by under two 8-bit levels ...
REPEAT_LEVELS = 1.5  # ... or it differs from its inner neighbour by at most 1.5 levels on average
MAX_TRIM = 0.35  # never trim more than this share of a side: a film is never mostly padding
DARK_SIGMAS = 0.5  # lung: darker than the central region's mean by half its standard deviation
LUNG_EROSIONS = 3  # erosions that cut dark bridges between the lungs and the outside air
DILATIONS = 48  # geodesic dilations that grow the outside air from the border (enough for a 64-pixel side)
LUNG_MASS = (0.02, 0.98)  # the box spans these quantiles of the lung pixels along each axis
LUNG_MARGIN = 0.08  # added on every side of the lung box, as a share of the trimmed film's side
MIN_BOX = 0.45  # a box narrower than this share of the trimmed film is not trusted: keep the trimmed film
MIN_LUNG_SHARE = 0.03  # fewer lung pixels than this share of the film: no lungs found, keep the trimmed film


def _first_content(padding: torch.Tensor) -> torch.Tensor:
    """(N, L) booleans, True where a line is padding, scanned from index 0 -> index of the first content line
    (L when every line is padding): the length of the leading run of True."""
    content_so_far = (~padding).to(torch.float32).cumsum(1)  # cumsum rather than cumprod: ONNX has no prod
    return (content_so_far == 0).to(torch.float32).sum(1)


def _leading_padding(lines: torch.Tensor) -> torch.Tensor:
    """lines (N, L, W): line i is padding when flat or when it repeats line i + 1 -> leading padding count (N,).

    Decided on whole 8-bit levels in float64, where every sum is an exact integer whatever the order of summation:
    a float32 std or mean lands on either side of its tolerance depending on how an engine orders its sums, which
    moved the trim by a line (and P by up to 4e-4) between PyTorch and ONNX Runtime on 2 films in 600."""
    # float32 for a mobile runtime (TFLite has no float64 sum): exact while a line's sum of squares stays under 2^24
    levels = torch.round(lines * 255.0).to(torch.float32 if PORTABLE_OPS.get() else torch.float64)
    width = lines.shape[2]
    total, squares = levels.sum(dim=2), (levels * levels).sum(dim=2)
    # unbiased std < FLAT_LEVELS  <=>  W * sum(x^2) - (sum x)^2 < FLAT_LEVELS^2 * W * (W - 1), in exact integers
    flat = width * squares - total * total < FLAT_LEVELS**2 * width * (width - 1)
    repeats = (levels[:, :-1] - levels[:, 1:]).abs().sum(dim=2) <= REPEAT_LEVELS * width
    repeats = torch.cat([repeats, torch.zeros_like(repeats[:, :1])], dim=1)
    return _first_content(flat | repeats)


def padding_box(pixels: torch.Tensor) -> torch.Tensor:
    """Float images (N, 1, H, W) in [0, 1] -> (N, 4) box (top, bottom, left, right) in [0, 1] fractions of the
    image: the film without its padding rows and columns, never cutting more than MAX_TRIM per side."""
    image = pixels[:, 0]
    height, width = image.shape[-2:]
    rows, columns = image, image.transpose(1, 2)
    top = _leading_padding(rows) / height
    bottom = 1.0 - _leading_padding(rows.flip(1)) / height
    left = _leading_padding(columns) / width
    right = 1.0 - _leading_padding(columns.flip(1)) / width
    top, left = top.clamp(max=MAX_TRIM), left.clamp(max=MAX_TRIM)
    bottom, right = bottom.clamp(min=1.0 - MAX_TRIM), right.clamp(min=1.0 - MAX_TRIM)
    return torch.stack([top, bottom, left, right], dim=1)


def _interpolation_matrix(start: torch.Tensor, end: torch.Tensor, size_in: int, size_out: int) -> torch.Tensor:
    """(N, size_out, size_in) bilinear weights that resample the span [start, end] (fractions of the side) of an
    axis to size_out samples; positions past the edge take the edge pixel (as grid_sample's border padding)."""
    centres = (torch.arange(size_out, dtype=start.dtype, device=start.device) + 0.5) / size_out  # output, in [0, 1]
    positions = start[:, None] + centres[None, :] * (end - start)[:, None]  # (N, out), fractions of the input
    pixels = (positions * size_in - 0.5).clamp(0.0, size_in - 1.0)
    index = torch.arange(size_in, dtype=start.dtype, device=start.device)
    return (1.0 - (pixels[..., None] - index).abs()).clamp(min=0.0)


def crop_to_box(pixels: torch.Tensor, box: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Resample each image's box (N, 4: top, bottom, left, right in [0, 1]) to `size` (default: the input's).
    Bilinear, with the border replicated where a box reaches past the image; written as two matrix products
    (rows, then columns) so that every exporter and mobile runtime lowers it (no grid_sample)."""
    height, width = size if size is not None else pixels.shape[-2:]
    top, bottom, left, right = box.to(pixels.dtype).unbind(1)
    rows = _interpolation_matrix(top, bottom, pixels.shape[-2], height)  # (N, H_out, H_in)
    columns = _interpolation_matrix(left, right, pixels.shape[-1], width)  # (N, W_out, W_in)
    return rows[:, None] @ pixels @ columns[:, None].transpose(-1, -2)


def _mass_quantile(profile: torch.Tensor, share: float) -> torch.Tensor:
    """(N, L) non-negative profile -> (N,) fractional position where its cumulative mass first reaches `share`."""
    cumulative = profile.cumsum(1) / profile.sum(1, keepdim=True).clamp(min=1e-6)
    return (cumulative < share).to(torch.float32).sum(1) / profile.shape[1]


def _erode(mask: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-mask, 3, stride=1, padding=1)


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(mask, 3, stride=1, padding=1)


def lung_mask(film: torch.Tensor) -> torch.Tensor:
    """Trimmed films (N, 1, S, S) at ANALYSIS_SIZE in [0, 1] -> (N, 1, S, S) float mask of the lung fields.

    Dark: below the central region's mean by DARK_SIGMAS of its spread (the lungs are the darkest large areas
    inside the body). The dark mask is eroded LUNG_EROSIONS times first, so thin dark bridges (soft tissue at
    the chest wall, blurred at this size) do not join the lungs to the air outside; whatever dark stays
    connected to the border is outside air; the rest, dilated back within the dark mask, is lung."""
    smooth = F.avg_pool2d(film, 3, stride=1, padding=1, count_include_pad=False)
    side = film.shape[-1]
    lo, hi = round(side * 0.2), round(side * 0.8)
    centre = smooth[..., lo:hi, lo:hi]
    threshold = centre.mean(dim=(2, 3), keepdim=True) - DARK_SIGMAS * centre.std(dim=(2, 3), keepdim=True)
    dark = (smooth < threshold).to(film.dtype)
    core = dark
    for _ in range(LUNG_EROSIONS):
        core = _erode(core)
    border = torch.ones_like(core)
    border[..., 1:-1, 1:-1] = 0.0
    outside = core * border
    for _ in range(DILATIONS):
        outside = _dilate(outside) * core
    lungs = core * (1.0 - outside)
    for _ in range(LUNG_EROSIONS):
        lungs = _dilate(lungs) * dark
    return lungs


def lung_box(pixels: torch.Tensor) -> torch.Tensor:
    """Float images (N, 1, H, W) in [0, 1] -> (N, 4) box (top, bottom, left, right) in [0, 1] image fractions:
    the padding-free film cropped to its lung fields plus LUNG_MARGIN, symmetric about the body's centre; the
    padding-free film itself where no plausible lung fields are found."""
    trimmed = padding_box(pixels)
    film = crop_to_box(pixels, trimmed, (ANALYSIS_SIZE, ANALYSIS_SIZE))
    lungs = lung_mask(film)[:, 0]
    rows, columns = lungs.sum(2), lungs.sum(1)
    top, bottom = _mass_quantile(rows, LUNG_MASS[0]), _mass_quantile(rows, LUNG_MASS[1])
    left, right = _mass_quantile(columns, LUNG_MASS[0]), _mass_quantile(columns, LUNG_MASS[1])
    body = film[:, 0].mean(1)  # column brightness: the spine and mediastinum are the brightest columns
    centre = _mass_quantile(body - body.amin(1, keepdim=True), 0.5)
    half_width = torch.maximum(centre - left, right - centre)
    left, right = centre - half_width, centre + half_width
    box = torch.stack([top - LUNG_MARGIN, bottom + LUNG_MARGIN, left - LUNG_MARGIN, right + LUNG_MARGIN], 1)
    box = box.clamp(0.0, 1.0)
    found = (lungs.mean(dim=(1, 2)) > MIN_LUNG_SHARE) & (box[:, 1] - box[:, 0] > MIN_BOX) & (
        box[:, 3] - box[:, 2] > MIN_BOX)
    full = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=box.dtype, device=box.device).expand_as(box)
    box = torch.where(found[:, None], box, full)
    # the lung box is in the trimmed film's coordinates: map it back to the image's
    height, width = trimmed[:, 1] - trimmed[:, 0], trimmed[:, 3] - trimmed[:, 2]
    return torch.stack([trimmed[:, 0] + box[:, 0] * height, trimmed[:, 0] + box[:, 1] * height,
                        trimmed[:, 2] + box[:, 2] * width, trimmed[:, 2] + box[:, 3] * width], 1)


def field_of_view_box(pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """The crop box of `mode` (FOV_MODES) for float images (N, 1, H, W) in [0, 1]."""
    if mode == "trim":
        return padding_box(pixels)
    if mode == "lungs":
        return lung_box(pixels)
    if mode == "none":
        return torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=pixels.dtype, device=pixels.device).expand(len(pixels), 4)
    raise ValueError(f"field of view '{mode}': choose from {', '.join(FOV_MODES)}")


def canonical_field_of_view(pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """Float images (N, 1, H, W) in [0, 1] cropped to their field of view and resampled to the same size."""
    if mode == "none":
        return pixels
    return crop_to_box(pixels, field_of_view_box(pixels, mode)).clamp(0.0, 1.0)


def _filled_per_side(lungs: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(N, S, S) 0/1 lung masks -> each side of the body's centre column filled between its outermost lung pixels
    along every row and every column (union), so opacities inside a lung field, which are bright and missing from
    a mask of dark pixels, belong to the region."""
    side = lungs.shape[-1]
    columns = torch.arange(side, dtype=lungs.dtype)
    filled = torch.zeros_like(lungs)
    for half in (columns[None, :] < centre[:, None] * side, columns[None, :] >= centre[:, None] * side):
        part = lungs * half[:, None, :].to(lungs.dtype)
        for dim in (2, 1):  # along rows (fill between left- and rightmost), then along columns
            index = torch.arange(side, dtype=lungs.dtype).view(*([1, 1, side] if dim == 2 else [1, side, 1]))
            present = part > 0
            first = torch.where(present, index, torch.full_like(part, side)).amin(dim, keepdim=True)
            last = torch.where(present, index, torch.full_like(part, -1)).amax(dim, keepdim=True)
            filled = torch.maximum(filled, ((index >= first) & (index <= last)).to(lungs.dtype))
    return filled


def _mirrored(masks: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(N, S, S) masks reflected about each film's centre column (a fraction of the side): the lungs are near
    mirror images, so a lung the dark mask missed (consolidated: bright) is found as its twin's reflection."""
    side = masks.shape[-1]
    source = (2 * centre[:, None] * side - 1 - torch.arange(side, dtype=masks.dtype)[None, :]).round().long()
    inside = (source >= 0) & (source < side)
    gathered = torch.gather(masks, 2, source.clamp(0, side - 1)[:, None, :].expand(-1, side, -1))
    return gathered * inside[:, None, :].to(masks.dtype)


def lung_region(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images (N, 1, H, W) in [0, 1] -> ((N, H, W) bool lung fields in the image's own frame, (N,) bool: the
    fields were found). The dark lung mask is filled along rows and columns on each side of the body's centre
    (opacities are bright: a mask of dark pixels leaves them out), joined with its mirror image about that centre
    (a whole consolidated lung is found as its twin's reflection) and dilated by two analysis pixels. Where no
    plausible lung fields are found (too few lung pixels) the region is the lung box (lung_box falls back to the
    padding-free film), so every film has a region and the caller says which it got. For audits of
    explanations (pneumoscan.evaluation.audit), not for the network's input."""
    trimmed = padding_box(pixels)
    film = crop_to_box(pixels, trimmed, (ANALYSIS_SIZE, ANALYSIS_SIZE))
    lungs = lung_mask(film)
    found = lungs.mean(dim=(1, 2, 3)) > MIN_LUNG_SHARE
    body = film[:, 0].mean(1)
    centre = _mass_quantile(body - body.amin(1, keepdim=True), 0.5)
    filled = _filled_per_side(lungs[:, 0], centre)
    filled = torch.maximum(filled, _mirrored(filled, centre))[:, None]
    for _ in range(2):
        filled = _dilate(filled)
    height, width = pixels.shape[-2:]
    region = torch.zeros(len(pixels), height, width, dtype=torch.bool)
    boxes = lung_box(pixels)
    for index in range(len(pixels)):
        if found[index]:
            top, bottom, left, right = trimmed[index].tolist()
            r0, r1 = round(top * height), max(round(top * height) + 1, round(bottom * height))
            c0, c1 = round(left * width), max(round(left * width) + 1, round(right * width))
            placed = F.interpolate(filled[index : index + 1], size=(r1 - r0, c1 - c0), mode="bilinear",
                                   align_corners=False)[0, 0] > 0.5
            region[index, r0:r1, c0:c1] = placed
        else:
            top, bottom, left, right = boxes[index].tolist()
            region[index, round(top * height):round(bottom * height), round(left * width):round(right * width)] = True
    return region, found
