/*
 * JPEG decoding through libjpeg-turbo's libjpeg API, with Pillow's verdicts on broken files
 * (Pillow's src/libImaging/JpegDecode.c and ImageFile.load):
 *   - a warning (corrupt entropy data, junk between segments) is no error: decoding goes on;
 *   - an error is ("broken data stream");
 *   - data that runs out before the last scanline is refused as truncated ("image file is
 *     truncated"), data that runs out only while looking for the end marker is not.
 * TurboJPEG's API reports only a pass's first warning and cannot say where the data ran out,
 * hence this file. Errors leave through longjmp from libjpeg's callbacks back to this file,
 * never through Rust frames. Used by src/imaging/jpeg.rs.
 * The training loader decodes only the crop it drew (decode_region: libjpeg-turbo's skipped and
 * cropped scanlines), with the whole decoding's pixels in the crop and its verdicts.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

enum {
    TAGFIX_JPEG_OK = 0,
    TAGFIX_JPEG_ERROR = 1,
    TAGFIX_JPEG_TRUNCATED = 2,
};

/* The messages' buffer size, for the Rust side. */
const size_t tagfix_jpeg_message_len = JMSG_LENGTH_MAX;

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
    /* In jpeg_finish_decompress: every scanline is out, running out of data is no truncation. */
    int finishing;
    char *message;
} verdicts;

typedef struct {
    struct jpeg_progress_mgr pub;
    int scan_limit;
} scan_guard;

static void on_error(j_common_ptr cinfo) {
    verdicts *v = (verdicts *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, v->message);
    longjmp(v->escape, TAGFIX_JPEG_ERROR);
}

/* Warnings (level < 0) are counted and otherwise ignored, as Pillow ignores them, except the data
 * running out before the last scanline; trace messages (level >= 0) are dropped. */
static void on_message(j_common_ptr cinfo, int level) {
    verdicts *v = (verdicts *)cinfo->err;
    if (level >= 0)
        return;
    if (cinfo->err->msg_code == JWRN_JPEG_EOF && !v->finishing) {
        (*cinfo->err->format_message)(cinfo, v->message);
        longjmp(v->escape, TAGFIX_JPEG_TRUNCATED);
    }
    cinfo->err->num_warnings++;
}

/* A crafted progressive file can hold thousands of tiny scans, each a pass over the image. */
static void check_scans(j_common_ptr cinfo) {
    scan_guard *g = (scan_guard *)cinfo->progress;
    verdicts *v = (verdicts *)cinfo->err;
    int scan = ((j_decompress_ptr)cinfo)->input_scan_number;
    if (scan > g->scan_limit) {
        snprintf(v->message, JMSG_LENGTH_MAX, "progressive JPEG with more than %d scans",
                 g->scan_limit);
        longjmp(v->escape, TAGFIX_JPEG_ERROR);
    }
}

/* Columns decoded on each side of a region beyond those it asks for: the chroma upsampling of a
 * cropped decoding treats the crop's edges as the image's, so the columns next to them can differ
 * from a whole decoding's; one iMCU (at most 32 columns wide) of context keeps the region's own
 * columns equal to it. */
#define REGION_MARGIN 32

/* Where a region decoding wrote: the first column of its rows and their width (what libjpeg's
 * cropping made of the request: the left edge moves down to an iMCU boundary). */
typedef struct {
    unsigned left;
    unsigned width;
} decoded_columns;

static int fail(struct jpeg_decompress_struct *cinfo, char *message, const char *what,
                unsigned value) {
    snprintf(message, JMSG_LENGTH_MAX, what, value);
    jpeg_destroy_decompress(cinfo);
    return TAGFIX_JPEG_ERROR;
}

/* Decodes the rows `region` (left, top, width, height) covers, and the columns around them libjpeg's
 * cropping adds (at most `cap` wide, else an error), into `out` at a stride of that width; the row
 * after the region's last in `out` is scratch. The rows below are still read, the last one decoded,
 * so that data ending early gets the whole decoding's verdict; the rows above are read and skipped
 * (libjpeg's jpeg_skip_scanlines: entropy-decoded, not transformed). */
static int decode_region(struct jpeg_decompress_struct *cinfo, const unsigned region[4],
                         unsigned cap, unsigned components, unsigned char *out,
                         decoded_columns *cols, char *message) {
    if (region[2] == 0 || region[3] == 0 || region[0] >= cinfo->output_width ||
        region[2] > cinfo->output_width - region[0] || region[1] >= cinfo->output_height ||
        region[3] > cinfo->output_height - region[1])
        return fail(cinfo, message, "the region lies outside the %u columns", cinfo->output_width);
    JDIMENSION left = region[0] > REGION_MARGIN ? region[0] - REGION_MARGIN : 0;
    JDIMENSION right = region[0] + region[2] + REGION_MARGIN;
    if (right > cinfo->output_width)
        right = cinfo->output_width;
    JDIMENSION width = right - left;
    jpeg_crop_scanline(cinfo, &left, &width);
    if (width > cap || left > region[0] || left + width < region[0] + region[2])
        return fail(cinfo, message, "libjpeg cropped to %u columns, not the region's", width);
    cols->left = left;
    cols->width = width;
    size_t stride = (size_t)width * components;
    if (region[1] > 0 && jpeg_skip_scanlines(cinfo, region[1]) != region[1])
        return fail(cinfo, message, "could not skip to row %u", region[1]);
    for (unsigned i = 0; i < region[3]; i++) {
        JSAMPROW row = out + (size_t)i * stride;
        if (jpeg_read_scanlines(cinfo, &row, 1) != 1)
            return fail(cinfo, message, "no scanline at row %u", cinfo->output_scanline);
    }
    unsigned last = cinfo->output_height - 1;
    if (cinfo->output_scanline < last) {
        unsigned skip = last - cinfo->output_scanline;
        if (jpeg_skip_scanlines(cinfo, skip) != skip)
            return fail(cinfo, message, "could not skip to row %u", last);
    }
    if (cinfo->output_scanline == last) {
        JSAMPROW row = out + (size_t)region[3] * stride;
        if (jpeg_read_scanlines(cinfo, &row, 1) != 1)
            return fail(cinfo, message, "no scanline at row %u", last);
    }
    if (cinfo->output_scanline != cinfo->output_height)
        return fail(cinfo, message, "decoding stopped at row %u", cinfo->output_scanline);
    return TAGFIX_JPEG_OK;
}

/* Reads the header and, with `out`, decodes into it: the whole image, or with `region` that part
 * (decode_region). `expected` is the size and four-component flag the header gave before (NULL:
 * this is that first reading, its results go to `found`). */
static int decompress(const unsigned char *data, size_t len, int scan_limit, unsigned found[3],
                      const unsigned expected[3], const unsigned *region, unsigned cap,
                      unsigned char *out, decoded_columns *cols, char *message) {
    struct jpeg_decompress_struct cinfo;
    verdicts v;
    scan_guard g;
    memset(&v, 0, sizeof(v));
    memset(&g, 0, sizeof(g));
    cinfo.err = jpeg_std_error(&v.pub);
    v.pub.error_exit = on_error;
    v.pub.emit_message = on_message;
    v.message = message;
    message[0] = '\0';
    g.pub.progress_monitor = check_scans;
    g.scan_limit = scan_limit;
    /* The verdict travels as setjmp's value (locals changed after setjmp are not to be read after
     * the jump), in one of the contexts C allows setjmp in. */
    switch (setjmp(v.escape)) {
    case 0:
        break;
    case TAGFIX_JPEG_TRUNCATED:
        jpeg_destroy_decompress(&cinfo);
        return TAGFIX_JPEG_TRUNCATED;
    default:
        jpeg_destroy_decompress(&cinfo);
        return TAGFIX_JPEG_ERROR;
    }
    jpeg_create_decompress(&cinfo);
    cinfo.progress = &g.pub;
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    found[0] = cinfo.image_width;
    found[1] = cinfo.image_height;
    found[2] = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    if (out == NULL) {
        jpeg_destroy_decompress(&cinfo);
        return TAGFIX_JPEG_OK;
    }
    unsigned components = expected[2] ? 4 : 3;
    cinfo.out_color_space = expected[2] ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_width != expected[0] || cinfo.output_height != expected[1] ||
        (unsigned)cinfo.output_components != components) {
        snprintf(message, JMSG_LENGTH_MAX, "the header reads %ux%u×%d, not %ux%u×%u",
                 cinfo.output_width, cinfo.output_height, cinfo.output_components, expected[0],
                 expected[1], components);
        jpeg_destroy_decompress(&cinfo);
        return TAGFIX_JPEG_ERROR;
    }
    if (region != NULL) {
        int rc = decode_region(&cinfo, region, cap, components, out, cols, message);
        if (rc != TAGFIX_JPEG_OK)
            return rc;
    }
    while (region == NULL && cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out + (size_t)cinfo.output_scanline * expected[0] * components;
        /* Only a suspending data source returns none; the memory source never suspends. */
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1)
            return fail(&cinfo, message, "no scanline at row %u", cinfo.output_scanline);
    }
    v.finishing = 1;
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return TAGFIX_JPEG_OK;
}

/* Reads the header: the frame's size and whether it has four components (CMYK or YCCK). */
int tagfix_jpeg_header(const unsigned char *data, size_t len, int scan_limit,
                       unsigned *width, unsigned *height, int *cmyk, char *message) {
    unsigned found[3] = {0, 0, 0};
    int rc = decompress(data, len, scan_limit, found, NULL, NULL, 0, NULL, NULL, message);
    *width = found[0];
    *height = found[1];
    *cmyk = (int)found[2];
    return rc;
}

/* Decodes to `out`: with `region` NULL the whole image, width × height pixels of 4 bytes (CMYK as
 * stored) when `cmyk`, else 3 (RGB, gray replicated); else the rows of `region` (left, top, width,
 * height; inside the image), each from column `*left` for `*width` columns (the region's and up to
 * REGION_MARGIN more on each side, at most `cap`), `out` holding region height + 1 rows of `cap`
 * pixels (decode_region). The header read again must give that size. */
int tagfix_jpeg_decode(const unsigned char *data, size_t len, int scan_limit, unsigned width,
                       unsigned height, int cmyk, const unsigned *region, unsigned cap,
                       unsigned char *out, unsigned *left, unsigned *out_width, char *message) {
    unsigned found[3];
    const unsigned expected[3] = {width, height, cmyk != 0};
    decoded_columns cols = {0, width};
    int rc = decompress(data, len, scan_limit, found, expected, region, cap, out, &cols, message);
    *left = cols.left;
    *out_width = cols.width;
    return rc;
}
