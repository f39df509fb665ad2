// Smooth Diffusion tab: give each job a task id so the WebUI progress bar, ETA and live preview follow it.
function smoothDiffusionSubmit(progressId, galleryId, args) {
    var id = randomId();
    var container = gradioApp().getElementById(progressId);
    var gallery = galleryId ? gradioApp().getElementById(galleryId) : null;
    requestProgress(id, container, gallery, function() {});
    var res = Array.from(args);
    res[0] = id;
    return res;
}

function smoothDiffusionSubmitInterpolate() {
    return smoothDiffusionSubmit('smooth_diffusion_interpolate_progress', 'smooth_diffusion_gallery', arguments);
}

function smoothDiffusionSubmitInvert() {
    return smoothDiffusionSubmit('smooth_diffusion_invert_progress', 'smooth_diffusion_inversion_gallery', arguments);
}

function smoothDiffusionSubmitIstd() {
    return smoothDiffusionSubmit('smooth_diffusion_istd_progress', null, arguments);
}
