"""The words on the demo page: what each section and method shows and how to
read its pictures, and captions that say what each picture is. A method
without a note here (a third party's) is introduced by its own summary."""

from __future__ import annotations

from typing import Any

SECTIONS = {
    "attribution": (
        "Attribution: what in the photograph explains the class",
        "Each method explains the model's top-1 class of each photograph. Heatmaps carry a colour bar of their raw "
        "values: signed maps (red raises the score, blue lowers it, white is zero) on a blue-white-red scale centred "
        "at zero; maps that cannot be negative from dark (low) to bright (high). Gradient images are grey where the "
        "gradient is zero, brighter or darker colours where it is positive or negative in that colour channel.",
    ),
    "synthesis": (
        "Synthesis: images made by optimization or search",
        "Images made to drive the model: attacks that change a photograph's class, images of a class made from noise, "
        "features inverted back to pixels, a photograph restyled. Captions say what the model sees in each.",
    ),
    "analysis": (
        "Analyses: a dataset of photo crops, and the weights",
        "The dataset: random crops of scikit-image's photographs, each crop labelled by the photograph it comes from "
        "(its folder, beside this page). Analyses stream it once; filters and pruning also read the weights.",
    ),
}

EVALUATION = (
    "Which explanation to trust: the methods scored",
    "A map is faithful if the pixels it ranks first are the ones the model needs. cnnviz evaluate measures that, "
    "and how concentrated a map is, for the methods below on the two photographs, beside model-free references "
    "(a random map; Sobel edges of the photo) that show what a score is worth. Mean ± standard error over the "
    "photographs; the best of each column in bold. The same table, the per-photo scores (scores.csv) and the "
    "curves are in evaluation/ beside this page.",
)

# metric -> how to read its column (and its curves); one line each on the page.
METRICS = {
    "deletion": "deletion ↓ (Petsiuk et al. 2018): the class probability as the map's most relevant pixels are removed "
                "first (set to the mean colour), area under that curve; lower is more faithful: the score falls at once.",
    "insertion": "insertion ↑ (Petsiuk et al. 2018): the class probability as those pixels return first to a blurred "
                 "photo, area under the curve; higher is more faithful: a few pixels bring the class back.",
    "sparseness": "sparseness ↑ (Gini index of |map|, Chalasani et al. 2020): 1 for a single pixel, 0 for a uniform "
                  "map; higher means a more concentrated explanation (not by itself a more faithful one).",
    "complexity": "complexity ↓ (entropy of the map's share per pixel, Bhatt et al. 2020): lower is simpler to read; "
                  "log(H·W) ≈ 10.8 for a uniform map at 224 px.",
}

# method -> (what the picture shows, how to read it); one line on the page.
NOTES = {
    "saliency": ("Simonyan et al. 2014: the gradient of the class score with respect to each pixel.",
                 "Bright pixels change the score most (max over colours of |gradient|); right, the signed gradient."),
    "gradcam": ("Selvaraju et al. 2017: the last feature maps weighted by their mean gradient, negatives cut off.",
                "Bright regions raise the class score; coarse by design (one value per cell of the last feature map)."),
    "cam": ("Zhou et al. 2016: the classifier's weights applied to the last feature maps before pooling.",
            "Red (bright where no value is negative) raises the class score, blue lowers it; its mean is the logit less the bias."),
    "guided_backprop": ("Springenberg et al. 2015: the gradient with negative signals stopped at every ReLU.",
                        "The grey-centred image shows the edges and textures the class depends on; grey: no influence."),
    "deconvnet": ("Zeiler & Fergus 2014: the strongest unit of a middle layer projected back to the pixels.",
                  "Left, the unit's receptive field in the photo; right, its reconstruction (grey = 0). This network has "
                  "no max-pooling, so the deconvnet's backward pass never reads the image: the pattern shows what the "
                  "unit's filters respond to, the same for any photo (Mahendran & Vedaldi 2016)."),
    "neuron_gradient": ("The gradient of one channel's mean activation (the default layer's most active one).",
                        "Where in the photo that channel looks; the signed gradient image on the right."),
    "guided_gradcam": ("Selvaraju et al. 2017: guided backprop multiplied by the upsampled Grad-CAM map.",
                       "Fine detail (guided backprop) limited to the class's region (Grad-CAM)."),
    "gradcam_plus_plus": ("Chattopadhay et al. 2018: Grad-CAM with per-position weights from higher-order terms.",
                          "Bright regions raise the class score; several instances of a class light up more evenly."),
    "layercam": ("Jiang et al. 2021: each position of the feature maps weighted by its own positive gradient.",
                 "Bright regions raise the class score; finer than Grad-CAM at earlier layers."),
    "smoothgrad": ("Smilkov et al. 2017: saliency averaged over noisy copies of the photo.",
                   "Like saliency with the noise averaged out: bright pixels change the score most."),
    "integrated_gradients": ("Sundararajan et al. 2017: gradients integrated on the path from a baseline "
                             "(the dataset mean) to the photo; the attributions sum to the score's change.",
                             "Signed: red pixels raise the class score, blue ones lower it; white is zero."),
    "occlusion": ("Zeiler & Fergus 2014: the score's drop when a grey window covers each region.",
                  "Signed: red regions, when hidden, lower the class score (they support it); blue ones raise it."),
    "rise": ("Petsiuk et al. 2018: the class probability averaged over random masks that keep each pixel.",
             "Bright regions keep the class probable when they alone are visible; forward passes only."),
    "score_cam": ("Wang et al. 2020: feature maps weighted by how much each, used as a mask, raises the score.",
                  "Bright regions raise the class score; no gradients, so it runs on the ONNX copy too."),
    "adversarial": ("Szegedy et al. 2014, Madry et al. 2018: a small perturbation (PGD, at most 8/255 per pixel) "
                    "that makes the model see another class (ostrich, as in Szegedy et al.).", "Left to right: the original, the adversarial image, the perturbation "
                    "amplified to be seen. The two photos look the same to a person."),
    "fooling_images": ("Nguyen et al. 2015: images evolved, with forward passes only, until the model is sure of a "
                       "class.", "Meaningless patterns the model labels with high confidence (the caption's p)."),
    "class_model": ("Simonyan et al. 2014 with Lucid-style regularizers: an image optimized to maximize a class "
                    "score.", "What the model takes as the essence of the class, from noise."),
    "deepdream": ("Mordvintsev et al. 2015: the photo changed to amplify whatever a middle layer already sees.",
                  "Patterns the layer responds to, grown over several scales."),
    "inversion": ("Mahendran & Vedaldi 2015: an image whose middle-layer features match the photo's, from noise.",
                  "What the layer keeps of the photo: layout and parts survive, exact colours and details less."),
    "style_transfer": ("Gatys et al. 2016: the photo's content features kept while the Gram matrices of a style "
                       "image's features are matched.", "The photo, restyled with the texture of the style image."),
    "filters": ("The first convolution's kernels, drawn in RGB.",
                "Each tile is one filter; colours show which colour edges and blobs it detects."),
    "top_patches": ("Girshick et al. 2014: per channel of an early layer, the dataset patches that excite it most, "
                    "each cropped to the unit's receptive field.", "One row per channel: what that channel detects."),
    "tsne": ("van der Maaten & Hinton 2008: the crops' pooled features embedded in 2-D.",
             "Crops of one photo (one colour) close together: the features tell the photos apart. Trustworthiness "
             "near 1: 2-D neighbours were neighbours in the features."),
    "pruning": ("Han et al. 2015: the smallest weights of the whole model set to zero at growing sparsity.",
                "How often the pruned model still agrees with the full one, and the weights' histograms per layer."),
}


def note(method: str, summary: str) -> tuple[str, str]:
    return NOTES.get(method, (summary, ""))


def _p(value: Any) -> str:
    return f"p={float(value):.3f}"


def synthesis_caption(result, index: int, key: str) -> str:
    """What one picture of a synthesis item is, and what the model sees in it."""
    record = result.records[index] if index < len(result.records) else {}
    if key == "input":
        if "label_before" in record:
            return f"original: {record['label_before']} ({_p(record['confidence_before'])})"
        return "original photo"
    if key == "content":
        return "content photo"
    if key == "style":
        return "style image"
    if key == "perturbation":
        linf = float(record.get("linf", 0.0)) * 255
        return f"perturbation x{float(record.get('amplification', 1.0)):.0f} (largest change {linf:.1f}/255)"
    if key == "image":
        if "label_after" in record:
            reached = "goal reached" if record.get("success") else "goal not reached"
            return f"adversarial: {record['label_after']} ({_p(record['confidence_after'])}), {reached}"
        if "target_label" in record and "confidence" in record:
            return f"made for {record['target_label']}: {_p(record['confidence'])}"
        return f"model sees {result.label(index)}"
    return key.replace("_", " ")


def analysis_caption(method: str, key: str, facts: dict[str, Any]) -> str:
    """What an analysis picture shows."""
    layer = facts.get("layer")
    if method == "top_patches":
        k = facts.get("top_k")
        if key == "overview":
            return f"top {k} patches (columns) of the first channels (rows) of {layer}"
        if key.startswith("channel_"):
            return f"channel {key.split('_', 1)[1]} of {layer}: its top {k} patches"
    if method == "tsne":
        if key == "scatter":
            return f"t-SNE of {layer} features of {facts.get('points')} crops, coloured by photo"
        if key == "thumbnails":
            return "the same map, each crop drawn at its position"
    if method == "pruning":
        if key == "curve":
            return "top-1 agreement with the unpruned model vs global sparsity"
        if key == "histograms":
            return "weight histograms per layer (orange: near zero)"
    if method == "filters" and key == "grid":
        return f"the filters of {layer}" if layer else "the first layer's filters"
    return key.replace("_", " ")
