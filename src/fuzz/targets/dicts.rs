//! Each format's tokens: what the mutator splices into inputs.

#[rustfmt::skip]
pub(super) const JSON_DICT: &[&[u8]] = &[
    b"{", b"}", b"[", b"]", b",", b":", b"\"", b"\\", b"\\\"", b"\\u0000", b"\\ud800", b"\\udc00",
    b"\\ud83d\\ude00", b"true", b"false", b"null", b"1e999", b"-0", b"0.5", b"\n", b"\r\n",
    b"\"image_path\"", b"\"union_label_id\"", b"\"parse_label_id\"", b"\"caption\"", b"\"tag\"",
    b"\xEF\xBB\xBF", b"\x1f\x8b\x08", b"\xC0\x80", b"\xED\xA0\x80", b"\xFF", b"[[[[", b"]]]]",
    b"{\"image_path\": \"x.jpg\", \"union_label_id\": [1]}",
];

#[rustfmt::skip]
pub(super) const MANIFEST_DICT: &[&[u8]] = &[
    b"\"tagfix.slot-manifest\"", b"\"present\"", b"\"absent\"", b"\"slots\"", b"\"slot\"",
    b"\"version\"", b"\"summary\"", b"\"union\"", b"18446744073709551615", b"-1", b"null",
];

pub(super) const TEXT_DICT: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\r",
    b"\xEF\xBB\xBF",
    b" ",
    b"\t",
    b"\xFF",
    b"\xC0\x80",
    b"\xE2\x80\xA8",
    b"\xC2\x85",
    b"_",
    b",",
    b"0.5",
    b"1",
    b"0",
    b"-0",
    b"nan",
    b"NaN",
    b"inf",
    b"1e40",
    b"1.5",
    b"cat",
    b"Dog",
    b"ice cream",
    b"\xE7\x8C\xAB",
    b"e\xCC\x81",
    b"\x00",
];

#[rustfmt::skip]
pub(super) const SAFETENSORS_DICT: &[&[u8]] = &[
    b"{\"", b"\"dtype\"", b"\"F32\"", b"\"F16\"", b"\"BF16\"", b"\"I64\"", b"\"BOOL\"", b"\"U8\"",
    b"\"F64\"", b"\"shape\"", b"\"data_offsets\"", b"\"__metadata__\"", b"\"image_ids\"",
    b"\"scores\"", b"\"embeddings\"", b"\"tagfix.schema\"", b"[", b"]", b":", b",", b"}", b"0",
    b"4294967296", b"[0,0]", b"[]", b"\"\"",
];

#[rustfmt::skip]
pub(super) const NPY_DICT: &[&[u8]] = &[
    b"\x93NUMPY", b"\x01\x00", b"\x02\x00", b"\x03\x00", b"'descr'", b"'<f4'", b"'<f8'", b"'<i8'",
    b"'>f4'", b"'|u1'", b"'<f2'", b"'|b1'", b"'<U3'", b"'O'", b"'fortran_order'", b"True", b"False",
    b"'shape'", b"()", b"(0,)", b"(3,)", b"(2, 3)", b"{", b"}", b"(", b")", b",", b": ", b"\n",
    b" ",
];

#[rustfmt::skip]
pub(super) const TOML_DICT: &[&[u8]] = &[
    b" = ", b"\n", b"[", b"]", b"[[", b"]]", b"\"", b"'", b"'''", b"\"\"\"", b"inf", b"-inf",
    b"nan", b"true", b"false", b"{", b"}", b"1979-05-27T07:32:00Z", b"#", b".", b"0x7f", b"1_000",
    b"k", b"also_k", b"min_cosine", b"calibration_quantile", b"max_changed_rows", b"batch_size",
    b"micro_batch_size", b"init_lr", b"betas", b"absent", b"loss_weights", b"random_augment",
    b"monitor", b"freeze", b"stage", b"\"finetune\"", b"precision", b"device",
    b"checkpoint_every", b"\"30m\"", b"ns\"", b"h ", b"584942417355y",
];

#[rustfmt::skip]
pub(super) const YAML_DICT: &[&[u8]] = &[
    b": ", b"\n", b"- ", b"&a ", b"*a", b"!!str ", b"!!float ", b"!!binary ", b"{", b"}", b"[",
    b"]", b"'", b"\"", b"|\n", b">\n", b"---\n", b"...\n", b"<<: *a", b"~", b".inf", b".nan", b"\t",
    b"  ", b"? ", b"1e-4", b"init_lr", b"batch_size", b"train_file", b"class_num", b"image_size",
    b"vit", b"max_epoch", b"stage",
];

#[rustfmt::skip]
pub(super) const BENCH_DICT: &[&[u8]] = &[
    b"\n", b"\r\n", b",", b" ", b"\n%%\n", b"cat", b"dog", b"sky", b"zebra", b"a", b"b", b"c", b"0",
    b"1", b"3", b"4294967296", b"-1", b"0.5", b"nan", b"inf", b"1e39", b"image_id,slot,score\n",
    b"\"", b"\xEF\xBB\xBF", b"\xFF",
];
