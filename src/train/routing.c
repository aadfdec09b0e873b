/* routing.c: the per-eval routing dump (see routing.h). Allocates its own bounded buffers (this is
 * evaluation, not a training step); everything it holds is O(ROUTING_MAX_TOKENS * sparse layers).
 *
 * Over MPI (src/train/dist.h) every rank runs the same forward passes in step, as evaluate() does
 * (expert parallelism exchanges tokens inside model_forward), each on its share of the windows of a
 * global batch; rank 0 records its own windows (the stream's start is among them) and writes. */
#include "train/routing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "data/builtin.h"
#include "data/dataloader.h"
#include "io/fileio.h"
#include "io/json.h"
#include "train/dist.h"

int routing_token_expert(const MoEActs *a, int t) {
    int best = -1;
    float g = 0;
    for (int k = 0; k < a->KS; k++) {
        size_t i = (size_t)t * a->KS + k;
        if (a->slot_row[i] < 0 || a->expert[i] < 0) continue;
        if (best < 0 || a->gate[i] > g) { best = a->expert[i]; g = a->gate[i]; }
    }
    return best;
}

/* The domain of every stream position [0, cnt) of the built-in valid split, or NULL (no error) when
 * the stream's line ends do not line up with the generated lines (then the counts would be wrong). */
static int *builtin_domains(const Tokenizer *tok, const int *ids, size_t n, size_t cnt, moelm_status *st) {
    *st = MOELM_OK;
    int eol = tokenizer_eos_id(tok);
    if (eol < 0) eol = tokenizer_piece_id(tok, "\n");
    if (eol < 0) return NULL;
    char *text = NULL;
    int *ld = NULL;
    size_t len = 0, nl = 0;
    *st = builtin_generate(&text, &len, 1, BUILTIN_EVAL_BYTES, &ld, &nl);
    moelm_free(text);
    if (*st) return NULL;
    size_t i0 = (tokenizer_eos_id(tok) >= 0 && n && ids[0] == eol) ? 1 : 0, ends = 0;
    for (size_t i = i0; i < n; i++) ends += ids[i] == eol;
    int *dom = ends == nl ? moelm_malloc(sizeof(int) * (cnt ? cnt : 1)) : NULL;
    if (ends == nl && !dom) *st = MOELM_ERR_NOMEM;
    if (dom) {
        size_t line = 0;
        for (size_t i = 0; i < cnt; i++) {
            dom[i] = i < i0 || line >= nl ? -1 : ld[line];
            if (i >= i0 && ids[i] == eol) line++;
        }
    }
    moelm_free(ld);
    return dom;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Appends, per expert, its top tokens [[piece, count], ...] from the (token, expert) pairs of one layer. */
static moelm_status top_tokens(StrBuf *sb, const Tokenizer *tok, const int *tokens, const short *experts, size_t cnt,
                               int E, int top) {
    uint64_t *keys = moelm_malloc(sizeof(uint64_t) * (cnt ? cnt : 1));
    int *best_id = moelm_malloc(sizeof(int) * (size_t)E * top);
    long *best_n = moelm_calloc((size_t)E * top, sizeof(long));
    if (!keys || !best_id || !best_n) {
        moelm_free(keys); moelm_free(best_id); moelm_free(best_n);
        return MOELM_ERR_NOMEM;
    }
    size_t m = 0;
    for (size_t i = 0; i < cnt; i++)
        if (experts[i] >= 0) keys[m++] = ((uint64_t)experts[i] << 32) | (uint32_t)tokens[i];
    qsort(keys, m, sizeof *keys, cmp_u64);
    for (size_t i = 0; i < m;) {
        size_t j = i;
        while (j < m && keys[j] == keys[i]) j++;
        int e = (int)(keys[i] >> 32), id = (int)(uint32_t)keys[i];
        long c = (long)(j - i);
        /* insertion into expert e's list, count descending; equal counts keep the smaller id first
         * (ids arrive ascending, so a later one never displaces an equal count) */
        long *bn = best_n + (size_t)e * top;
        int *bi = best_id + (size_t)e * top;
        int p = top;
        while (p > 0 && bn[p - 1] < c) p--;
        if (p < top) {
            memmove(bn + p + 1, bn + p, sizeof(long) * (size_t)(top - p - 1));
            memmove(bi + p + 1, bi + p, sizeof(int) * (size_t)(top - p - 1));
            bn[p] = c;
            bi[p] = id;
        }
        i = j;
    }
    sb_printf(sb, "[");
    for (int e = 0; e < E; e++) {
        sb_printf(sb, "%s[", e ? ", " : "");
        for (int k = 0; k < top && best_n[(size_t)e * top + k] > 0; k++) {
            const char *piece = tokenizer_piece(tok, best_id[(size_t)e * top + k]);
            sb_printf(sb, "%s[", k ? ", " : "");
            sb_json_string(sb, piece ? piece : "?");
            sb_printf(sb, ", %ld]", best_n[(size_t)e * top + k]);
        }
        sb_printf(sb, "]");
    }
    sb_printf(sb, "]");
    moelm_free(keys); moelm_free(best_id); moelm_free(best_n);
    return MOELM_OK;
}

moelm_status routing_begin(RoutingRec *rec, const Model *m, size_t n, size_t max_batches) {
    memset(rec, 0, sizeof *rec);
    int L = config_num_moe_layers(&m->cfg);
    if (L <= 0 || n < 2) return MOELM_OK;   /* nothing to record: rec->L == 0 */
    int B = m->B, T = m->T, Bg = B * dist_world();   /* this rank's windows, all ranks' windows */
    size_t BT = (size_t)B * T;
    size_t nb = eval_num_batches(n, Bg, T, T), want = (ROUTING_MAX_TOKENS + BT - 1) / BT;
    if (nb > want) nb = want;
    if (max_batches && nb > max_batches) nb = max_batches;
    rec->L = L;
    rec->nb = nb;
    rec->cap = nb * BT;
    rec->tokens = moelm_malloc(sizeof(int) * rec->cap);
    rec->pos = moelm_malloc(sizeof(size_t) * rec->cap);
    rec->experts = moelm_malloc(sizeof(short) * rec->cap * (size_t)L);
    moelm_status st = rec->tokens && rec->pos && rec->experts ? MOELM_OK : MOELM_ERR_NOMEM;
    if (dist_any_failed(st)) {
        if (!st) st = moelm_fail(MOELM_ERR_NOMEM, "routing dump: another rank ran out of memory");
        else moelm_fail(st, "routing dump: out of memory");
        routing_free(rec);
        return st;
    }
    return MOELM_OK;
}

void routing_take(RoutingRec *rec, const Model *m, const int *inp, const int *tgt, size_t b) {
    if (!rec || rec->L == 0 || b >= rec->nb) return;
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    model_moe_layers(m, ml, CONFIG_MAX_MOE_LAYERS);
    size_t BT = (size_t)m->B * m->T, BgT = BT * (size_t)dist_world();
    for (size_t i = 0; i < BT; i++) {
        if (tgt[i] < 0) continue;
        size_t c = rec->cnt++;
        rec->tokens[c] = inp[i];
        rec->pos[c] = b * BgT + i;   /* rank 0's window w = b*Bg + row holds inputs ids[w*T ...]: stream index b*Bg*T + i */
        for (int l = 0; l < rec->L; l++) rec->experts[(size_t)l * rec->cap + c] = (short)routing_token_expert(ml[l].a, (int)i);
    }
}

void routing_free(RoutingRec *rec) {
    moelm_free(rec->tokens); moelm_free(rec->pos); moelm_free(rec->experts);
    memset(rec, 0, sizeof *rec);
}

moelm_status routing_dump(const char *run_dir, long step, Model *m, const Tokenizer *tok, const int *ids, size_t n,
                          size_t max_batches, const char *data) {
    RoutingRec rec;
    moelm_status st = routing_begin(&rec, m, n, max_batches);
    if (st || rec.L == 0) return st;
    int Bg = m->B * dist_world(), T = m->T;
    size_t BgT = (size_t)Bg * T;
    int *inp = moelm_malloc(sizeof(int) * BgT), *tgt = moelm_malloc(sizeof(int) * BgT);
    st = inp && tgt ? MOELM_OK : MOELM_ERR_NOMEM;
    if (dist_any_failed(st)) {
        if (!st) st = moelm_fail(MOELM_ERR_NOMEM, "routing dump: another rank ran out of memory");
        else moelm_fail(st, "routing dump: out of memory");
    } else {
        /* routing of every counted token: inference forward passes over the first nb eval batches */
        Rng saved = m->rng;
        for (size_t b = 0; b < rec.nb; b++) {
            eval_batch(ids, n, Bg, T, T, b, inp, tgt);
            dist_take_rows(inp, tgt, Bg, T);
            model_forward(m, inp, tgt, 0);
            routing_take(&rec, m, inp, tgt, b);
        }
        m->rng = saved;
    }
    moelm_free(inp); moelm_free(tgt);
    if (st) { routing_free(&rec); return st; }
    return routing_finish(&rec, run_dir, step, m, tok, ids, n, data);
}

moelm_status routing_finish(RoutingRec *rec, const char *run_dir, long step, const Model *m, const Tokenizer *tok,
                            const int *ids, size_t n, const char *data) {
    moelm_status st = MOELM_OK;
    StrBuf sb = {0};
    int *dom = NULL;
    if (rec->L == 0 || !dist_is_root()) goto done;
    const MoEConfig *mc = &m->moe_cfg;
    int L = rec->L, E = mc->E;
    size_t cap = rec->cap, cnt = rec->cnt;
    int *tokens = rec->tokens;
    size_t *pos = rec->pos;
    short *experts = rec->experts;
    int top = E * L > 64 ? (640 / (E * L) > 3 ? 640 / (E * L) : 3) : ROUTING_TOP;

    sb_printf(&sb, "{\"format\": \"moelm-routing\", \"version\": 1, \"step\": %ld, \"router\": \"%s\", \"num_experts\": %d, "
                   "\"k\": %d, \"word_level\": %s, \"layers\": [",
              step, router_name(mc->router), E, mc->K,
              tokenizer_kind(tok) == TOK_WORD ? "true" : "false");
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    model_moe_layers(m, ml, CONFIG_MAX_MOE_LAYERS);
    for (int l = 0; l < L; l++) {
        char name[32];
        if (ml[l].block < 0) snprintf(name, sizeof name, "head");
        else snprintf(name, sizeof name, "block %d", ml[l].block);
        sb_printf(&sb, "%s\"%s\"", l ? ", " : "", name);
    }
    sb_printf(&sb, "], \"tokens_counted\": %zu, \"sample\": {\"pieces\": [", cnt);
    size_t ns = cnt < ROUTING_SAMPLE ? cnt : ROUTING_SAMPLE;
    for (size_t i = 0; i < ns; i++) {
        char *piece = NULL;
        if (tokenizer_decode_piece(tok, tokens[i], &piece) != MOELM_OK) { st = MOELM_ERR_NOMEM; goto done; }
        sb_printf(&sb, "%s", i ? ", " : "");
        sb_json_string(&sb, piece);
        moelm_free(piece);
    }
    sb_printf(&sb, "], \"experts\": [");
    for (int l = 0; l < L; l++) {
        sb_printf(&sb, "%s[", l ? ", " : "");
        for (size_t i = 0; i < ns; i++) sb_printf(&sb, "%s%d", i ? ", " : "", experts[(size_t)l * cap + i]);
        sb_printf(&sb, "]");
    }
    sb_printf(&sb, "]}, \"expert_tokens\": [");
    for (int l = 0; l < L; l++) {
        long c[256] = {0};
        for (size_t i = 0; i < cnt; i++) {
            int e = experts[(size_t)l * cap + i];
            if (e >= 0 && e < 256) c[e]++;
        }
        sb_printf(&sb, "%s[", l ? ", " : "");
        for (int e = 0; e < E && e < 256; e++) sb_printf(&sb, "%s%ld", e ? ", " : "", c[e]);
        sb_printf(&sb, "]");
    }
    sb_printf(&sb, "]");

    if (data && !strcmp(data, "builtin")) {
        size_t last = cnt ? pos[cnt - 1] + 1 : 0;
        dom = builtin_domains(tok, ids, n, last, &st);
        if (st) goto done;
    }
    if (dom) {
        sb_printf(&sb, ", \"domains\": [");
        for (int d = 0; d < BUILTIN_DOMAINS; d++) sb_printf(&sb, "%s\"%s\"", d ? ", " : "", builtin_domain_name(d));
        sb_printf(&sb, "], \"domain_counts\": [");
        for (int l = 0; l < L; l++) {
            long c[BUILTIN_DOMAINS][256];
            memset(c, 0, sizeof c);
            for (size_t i = 0; i < cnt; i++) {
                int d = dom[pos[i]], e = experts[(size_t)l * cap + i];
                if (d >= 0 && d < BUILTIN_DOMAINS && e >= 0 && e < 256) c[d][e]++;
            }
            sb_printf(&sb, "%s[", l ? ", " : "");
            for (int d = 0; d < BUILTIN_DOMAINS; d++) {
                sb_printf(&sb, "%s[", d ? ", " : "");
                for (int e = 0; e < E && e < 256; e++) sb_printf(&sb, "%s%ld", e ? ", " : "", c[d][e]);
                sb_printf(&sb, "]");
            }
            sb_printf(&sb, "]");
        }
        sb_printf(&sb, "]");
    }
    sb_printf(&sb, ", \"top_tokens\": [");
    for (int l = 0; l < L && !st; l++) {
        sb_printf(&sb, "%s", l ? ", " : "");
        st = top_tokens(&sb, tok, tokens, experts + (size_t)l * cap, cnt, E, top);
    }
    sb_printf(&sb, "]}\n");
    if (st) goto done;
    if (sb.failed) { st = MOELM_ERR_NOMEM; goto done; }

    char path[4096];
    snprintf(path, sizeof path, "%s/routing", run_dir);
    st = dir_make(path);
    snprintf(path, sizeof path, "%s/routing/step-%ld.json", run_dir, step);
    if (!st) st = file_write_atomic(path, sb.buf, sb.len);

done:
    if (st == MOELM_ERR_NOMEM) moelm_fail(st, "routing dump: out of memory");
    routing_free(rec);
    moelm_free(dom);
    sb_free(&sb);
    return st;
}
