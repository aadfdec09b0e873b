/* forward_file.c: `moelm forward` (forward_file.h). Not a training path: it allocates per case. */
#include "model/forward_file.h"

#include <stdio.h>
#include <string.h>
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/encdec.h"
#include "model/model.h"

#define MAX_CASES 256
#define MAX_OUT 4096

typedef struct {
    char prefix[96];
    int B, Te, Td;                  /* Td 0: no decoder tensors */
    int *ids, *mask, *dec, *labels; /* [B, Te], [B, Te] or NULL, [B, Td] or NULL, [B, Td] or NULL */
    int *dmask;                     /* [B, Td] or NULL: decoder_attention_mask */
} Case;

typedef struct {
    StTensor t[MAX_OUT];
    char *names[MAX_OUT];
    float *bufs[MAX_OUT];
    int n;
} Outputs;

/* A [B, T] int32 tensor of the inputs file: 1 and its shape when present, 0 when absent; an error for
 * another dtype or rank. */
static int input_shape(const SafeTensors *st, const char *name, int64_t shape[2], moelm_status *err) {
    const char *dt;
    int nd;
    int64_t sh[ST_MAX_DIMS];
    if (!st_info(st, name, &dt, &nd, sh)) return 0;
    if (strcmp(dt, "I32") || nd != 2 || sh[0] < 1 || sh[1] < 1 || sh[0] > 1 << 16 || sh[1] > 1 << 16) {
        *err = moelm_fail(MOELM_ERR_DATA, "input tensor '%s' must be int32 [batch, length] with both in [1, 65536] "
                          "(got %s, %d dims)", name, dt, nd);
        return 0;
    }
    shape[0] = sh[0];
    shape[1] = sh[1];
    return 1;
}

static moelm_status read_ints(const SafeTensors *st, const char *prefix, const char *what, const int64_t shape[2],
                              int **out) {
    char name[160];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    *out = moelm_malloc(sizeof(int) * (size_t)(shape[0] * shape[1]));
    if (!*out) return MOELM_ERR_NOMEM;
    return st_read_i32(st, name, (int32_t *)*out, 2, shape);
}

/* The cases of the inputs file: every prefix P of a tensor P.input_ids, with its optional tensors; any
 * other tensor is an error (a misspelt name would otherwise be silently skipped). */
static moelm_status read_cases(const SafeTensors *st, Case *cs, int *ncase) {
    static const char *const parts[] = {"input_ids", "attention_mask", "decoder_input_ids", "labels",
                                        "decoder_attention_mask"};
    moelm_status err = MOELM_OK;
    int n = 0;
    for (int i = 0; i < st_count(st) && !err; i++) {
        const char *name = st_name(st, i);
        size_t len = strlen(name), sl = strlen(".input_ids");
        if (len <= sl || strcmp(name + len - sl, ".input_ids")) continue;
        if (n == MAX_CASES) return moelm_fail(MOELM_ERR_DATA, "more than %d cases in the inputs file", MAX_CASES);
        if (len - sl >= sizeof cs[n].prefix) return moelm_fail(MOELM_ERR_DATA, "case name '%.60s...' is too long", name);
        Case *c = &cs[n++];
        memset(c, 0, sizeof *c);
        memcpy(c->prefix, name, len - sl);
        c->prefix[len - sl] = 0;
    }
    *ncase = n;   /* from here on the caller frees what was read */
    if (!n) return moelm_fail(MOELM_ERR_DATA, "the inputs file has no case (no tensor named P.input_ids)");
    for (int i = 0; i < st_count(st); i++) {   /* every tensor belongs to a case */
        const char *name = st_name(st, i);
        int ok = 0;
        for (int k = 0; k < n && !ok; k++)
            for (int p = 0; p < 5 && !ok; p++) {
                size_t pl = strlen(cs[k].prefix);
                ok = !strncmp(name, cs[k].prefix, pl) && name[pl] == '.' && !strcmp(name + pl + 1, parts[p]);
            }
        if (!ok)
            return moelm_fail(MOELM_ERR_DATA, "input tensor '%s' is not P.input_ids, P.attention_mask, "
                              "P.decoder_input_ids, P.decoder_attention_mask or P.labels of a case P", name);
    }
    for (int k = 0; k < n && !err; k++) {
        Case *c = &cs[k];
        char name[160];
        int64_t s[2], sd[2] = {0, 0};
        snprintf(name, sizeof name, "%s.input_ids", c->prefix);
        if (!input_shape(st, name, s, &err)) break;
        c->B = (int)s[0];
        c->Te = (int)s[1];
        err = read_ints(st, c->prefix, "input_ids", s, &c->ids);
        snprintf(name, sizeof name, "%s.attention_mask", c->prefix);
        int64_t sm[2];
        if (!err && input_shape(st, name, sm, &err)) {
            if (sm[0] != s[0] || sm[1] != s[1])
                err = moelm_fail(MOELM_ERR_DATA, "%s: shape [%lld, %lld], input_ids is [%d, %d]", name, (long long)sm[0],
                                 (long long)sm[1], c->B, c->Te);
            if (!err) err = read_ints(st, c->prefix, "attention_mask", s, &c->mask);
        }
        for (int p = 2; p < 5 && !err; p++) {
            snprintf(name, sizeof name, "%s.%s", c->prefix, parts[p]);
            int64_t sh[2];
            if (!input_shape(st, name, sh, &err)) continue;
            if (p == 4 && !sd[1])
                err = moelm_fail(MOELM_ERR_DATA, "%s without %s.decoder_input_ids or %s.labels", name, c->prefix,
                                 c->prefix);
            else if (sh[0] != s[0] || (sd[1] && sh[1] != sd[1]))
                err = moelm_fail(MOELM_ERR_DATA, "%s: shape [%lld, %lld] does not match the case's batch %d and "
                                 "decoder length", name, (long long)sh[0], (long long)sh[1], c->B);
            sd[0] = sh[0];
            sd[1] = sh[1];
            if (!err) err = read_ints(st, c->prefix, parts[p], sh, p == 2 ? &c->dec : p == 3 ? &c->labels : &c->dmask);
        }
        c->Td = (int)sd[1];
    }
    return err;
}

static void cases_free(Case *cs, int n) {
    for (int k = 0; k < n; k++) {
        moelm_free(cs[k].ids);
        moelm_free(cs[k].mask);
        moelm_free(cs[k].dec);
        moelm_free(cs[k].labels);
        moelm_free(cs[k].dmask);
    }
}

/* Adds a copy of data[dims] under "prefix.what". */
static moelm_status out_add(Outputs *o, const char *prefix, const char *what, const float *data, int ndim, int64_t d0,
                            int64_t d1, int64_t d2) {
    if (o->n == MAX_OUT) return moelm_fail(MOELM_ERR_DATA, "more than %d outputs", MAX_OUT);
    int64_t dims[3] = {d0, d1, d2};
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)dims[i];
    char name[256];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    o->names[o->n] = moelm_strdup(name);
    o->bufs[o->n] = moelm_malloc(sizeof(float) * (n ? n : 1));
    if (!o->names[o->n] || !o->bufs[o->n]) return MOELM_ERR_NOMEM;
    memcpy(o->bufs[o->n], data, sizeof(float) * n);
    StTensor *t = &o->t[o->n++];
    t->name = o->names[o->n - 1];
    t->data = o->bufs[o->n - 1];
    t->ndim = ndim;
    for (int i = 0; i < 4; i++) t->shape[i] = i < ndim ? dims[i] : 0;
    return MOELM_OK;
}

static moelm_status out_scalar(Outputs *o, const char *prefix, const char *what, float v) {
    return out_add(o, prefix, what, &v, 0, 0, 0, 0);
}

static moelm_status run_switch(Model *m, const Case *c, Outputs *o) {
    if (!c->Td) return moelm_fail(MOELM_ERR_DATA, "case %s: an encoder-decoder needs %s.decoder_input_ids or %s.labels",
                                  c->prefix, c->prefix, c->prefix);
    Seq2SeqBatch b = {c->B, c->Te, c->Td, c->ids, c->mask, c->dec, c->labels, c->dmask};
    moelm_status st = encdec_check_batch(m, &b);
    if (st) return moelm_fail_context(st, "case %s", c->prefix);
    encdec_forward(m, &b, 0);
    const EncDec *ed = m->ed;
    int C = m->cfg.d_model, V = m->cfg.vocab_size, E = ed->enc.moe_cfg.E;
    st = out_add(o, c->prefix, "logits", ed->logits, 3, c->B, c->Td, V);
    if (!st) st = out_add(o, c->prefix, "encoder_last_hidden_state", ed->enc.out, 3, c->B, c->Te, C);
    if (!st) st = out_add(o, c->prefix, "decoder_last_hidden_state", ed->dec.out, 3, c->B, c->Td, C);
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    int n = model_moe_layers(m, ml, CONFIG_MAX_MOE_LAYERS);
    for (int i = 0; i < n && !st; i++) {
        char what[96];
        snprintf(what, sizeof what, "%s.block.%d.router_logits", ml[i].stack ? "decoder" : "encoder", ml[i].block);
        st = out_add(o, c->prefix, what, ml[i].a->logits, 3, c->B, ml[i].stack ? c->Td : c->Te, E);
    }
    if (!st) st = out_scalar(o, c->prefix, "encoder_z_loss", ed->enc.z_loss);
    if (!st) st = out_scalar(o, c->prefix, "encoder_aux_loss", ed->enc.aux_loss);
    if (!st) st = out_scalar(o, c->prefix, "decoder_z_loss", ed->dec.z_loss);
    if (!st) st = out_scalar(o, c->prefix, "decoder_aux_loss", ed->dec.aux_loss);
    if (!st && c->labels) st = out_scalar(o, c->prefix, "lm_loss", ed->lm_loss);
    if (!st && c->labels) st = out_scalar(o, c->prefix, "loss", ed->loss);
    return st;
}

/* Decoder-only: the model is built for the case's shape (its activations are sized for B x T). */
static moelm_status run_lm(const char *dir, const Case *c, Outputs *o) {
    if (c->dec || c->labels)
        return moelm_fail(MOELM_ERR_DATA, "case %s: a decoder-only model takes %s.input_ids only", c->prefix, c->prefix);
    if (c->mask)
        for (int i = 0; i < c->B * c->Te; i++)
            if (c->mask[i] != 1)
                return moelm_fail(MOELM_ERR_DATA, "case %s: a decoder-only moelm model has no padding mask (attention_mask "
                                  "must be all 1)", c->prefix);
    Model m;
    memset(&m, 0, sizeof m);
    moelm_status st = model_load_dir(&m, dir, c->B, c->Te, c->Te);
    if (st) return st;
    int N = c->B * c->Te, V = m.cfg.vocab_size;
    int *tgt = moelm_malloc(sizeof(int) * (size_t)N);
    if (!tgt) st = MOELM_ERR_NOMEM;
    for (int i = 0; i < N && !st; i++) {
        if (c->ids[i] < 0 || c->ids[i] >= V)
            st = moelm_fail(MOELM_ERR_DATA, "case %s: input id %d outside the vocabulary [0, %d)", c->prefix, c->ids[i], V);
        tgt[i] = (i + 1) % c->Te ? c->ids[i + 1] : -1;
    }
    if (!st) {
        m.full_logits = 1;   /* an adaptive softmax's logits: every word's log p */
        float loss = model_forward(&m, c->ids, tgt, 0);
        st = out_add(o, c->prefix, "logits", m.a.logits, 3, c->B, c->Te, V);
        if (!st) st = out_scalar(o, c->prefix, "loss", loss + m.aux_loss);
    }
    moelm_free(tgt);
    model_free(&m);
    return st;
}

moelm_status forward_file_run(const char *model_dir, const char *in_path, const char *out_path, char *note,
                              size_t note_cap) {
    SafeTensors *in = NULL;
    moelm_status st = st_open(&in, in_path);
    if (st) return st;
    static Case cs[MAX_CASES];
    int n = 0;
    st = read_cases(in, cs, &n);
    st_close(in);
    if (st) st = moelm_fail_context(st, "%s", in_path);
    Outputs *o = moelm_calloc(1, sizeof(Outputs));
    if (!st && !o) st = MOELM_ERR_NOMEM;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    ModelConfig cfg;
    if (!st && gguf_is_file(model_dir)) {   /* a GGUF file: the llama family, read by model_load_dir */
        memset(&cfg, 0, sizeof cfg);
        cfg.model_type = MODEL_LLAMA;
    } else if (!st) {
        st = config_load(&cfg, path);
    }
    if (note && note_cap) snprintf(note, note_cap, "%s", st ? "" : cfg.note);
    if (!st && cfg.model_type == MODEL_SWITCH) {
        int B = 1, Te = 1, Td = 1;
        for (int k = 0; k < n; k++) {
            B = cs[k].B > B ? cs[k].B : B;
            Te = cs[k].Te > Te ? cs[k].Te : Te;
            Td = cs[k].Td > Td ? cs[k].Td : Td;
        }
        Model m;
        memset(&m, 0, sizeof m);
        st = model_load_dir(&m, model_dir, B, Te, Td);
        for (int k = 0; k < n && !st; k++)
            if ((st = run_switch(&m, &cs[k], o)) == MOELM_ERR_DATA) st = moelm_fail_context(st, "%s", in_path);
        if (m.params) model_free(&m);
    } else {
        for (int k = 0; k < n && !st; k++)
            if ((st = run_lm(model_dir, &cs[k], o)) == MOELM_ERR_DATA) st = moelm_fail_context(st, "%s", in_path);
    }
    if (!st) st = st_write(out_path, o->t, o->n, NULL);
    if (o)
        for (int i = 0; i < o->n; i++) {
            moelm_free(o->names[i]);
            moelm_free(o->bufs[i]);
        }
    moelm_free(o);
    cases_free(cs, n);
    return st;
}
