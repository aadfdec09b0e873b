/* builtin.c: the generator of the built-in corpus. See builtin.h for what it produces.
 *
 * Structure: a growable text buffer (Gen) and one emitter per domain, each writing one line. Every
 * random choice goes through the Gen's Rng in a fixed order, so a (split, approx_bytes) pair always
 * gives the same bytes. The content is meant to be learnable: arithmetic results are right, calendar
 * facts hold, the grammar has agreement and selectional restrictions, code uses its own variables.
 *
 * Not here: tokenization, file I/O.
 */
#include "data/builtin.h"
#include "common/util.h"

#include <stdio.h>
#include <string.h>

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- output buffer ----------------------------------------------------------------------------- */

typedef struct {
    Rng rng;
    char *p; size_t n, cap;   /* text [n], NUL-terminated, capacity cap */
    int at_line_start;        /* no separator before the next word */
    int failed;               /* an allocation failed; later writes are dropped */
} Gen;

static void gen_reserve(Gen *g, size_t extra) {
    if (g->failed || g->n + extra + 1 <= g->cap) return;
    size_t cap = g->cap * 2;
    if (cap < g->n + extra + 1) cap = g->n + extra + 1;
    char *q = moelm_realloc(g->p, cap);
    if (!q) { g->failed = 1; return; }
    g->p = q;
    g->cap = cap;
}

/* Appends one word, preceded by a single space unless it starts the line. */
static void w(Gen *g, const char *word) {
    size_t len = strlen(word);
    gen_reserve(g, len + 1);
    if (g->failed) return;
    if (!g->at_line_start) g->p[g->n++] = ' ';
    memcpy(g->p + g->n, word, len);
    g->n += len;
    g->p[g->n] = '\0';
    g->at_line_start = 0;
}

static void wnum(Gen *g, int v) {
    char s[16];
    snprintf(s, sizeof s, "%d", v);
    w(g, s);
}

/* Appends the words of a space-separated string. */
static void ws(Gen *g, const char *words) {
    char word[64];
    while (*words) {
        while (*words == ' ') words++;
        size_t k = 0;
        while (words[k] && words[k] != ' ') k++;
        if (k == 0) break;
        if (k >= sizeof word) k = sizeof word - 1;
        memcpy(word, words, k);
        word[k] = '\0';
        w(g, word);
        words += k;
    }
}

static void eol(Gen *g) {
    gen_reserve(g, 1);
    if (g->failed) return;
    g->p[g->n++] = '\n';
    g->p[g->n] = '\0';
    g->at_line_start = 1;
}

static int rnd(Gen *g, int n) { return (int)rng_below(&g->rng, (uint32_t)n); }
static int chance(Gen *g, int percent) { return rnd(g, 100) < percent; }
#define PICK(g, arr) ((arr)[rnd((g), NELEM(arr))])

/* ---- domain 0: arithmetic ------------------------------------------------------------------------ */

static void gen_arithmetic(Gen *g) {
    int a, b, c;
    switch (rnd(g, 6)) {
    case 0:
        a = rnd(g, 100); b = rnd(g, 100);
        wnum(g, a); w(g, "plus"); wnum(g, b); w(g, "equals"); wnum(g, a + b);
        break;
    case 1:
        a = rnd(g, 100); b = rnd(g, a + 1);
        wnum(g, a); w(g, "minus"); wnum(g, b); w(g, "equals"); wnum(g, a - b);
        break;
    case 2:
        a = rnd(g, 13); b = rnd(g, 13);
        wnum(g, a); w(g, "times"); wnum(g, b); w(g, "equals"); wnum(g, a * b);
        break;
    case 3:
        b = 1 + rnd(g, 12); c = rnd(g, 13);
        wnum(g, b * c); w(g, "divided"); w(g, "by"); wnum(g, b); w(g, "equals"); wnum(g, c);
        break;
    case 4:
        a = rnd(g, 100); b = rnd(g, 100);
        ws(g, "the sum of"); wnum(g, a); w(g, "and"); wnum(g, b); w(g, "is"); wnum(g, a + b);
        break;
    default:
        a = rnd(g, 50); b = rnd(g, 50); c = rnd(g, a + b + 1);
        wnum(g, a); w(g, "plus"); wnum(g, b); w(g, "minus"); wnum(g, c); w(g, "equals"); wnum(g, a + b - c);
        break;
    }
}

/* ---- domain 1: dates and times ------------------------------------------------------------------- */

static const char *const k_days[7] = {"sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"};
static const char *const k_months[12] = {"january", "february", "march", "april", "may", "june", "july",
                                         "august", "september", "october", "november", "december"};
static const char *const k_events[] = {"the meeting", "the party", "the exam", "the concert", "the flight",
                                       "the wedding", "the lecture", "the match", "the dinner", "the interview",
                                       "the appointment", "the workshop", "the festival", "the rehearsal"};

static int is_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }
static int month_days(int m, int y) {   /* m in 0..11 */
    static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return d[m] + (m == 1 && is_leap(y));
}
/* Day of the week (0 = sunday) of day d (1-based) of month m (0-based) of year y: Sakamoto's method. */
static int weekday(int y, int m, int d) {
    static const int t[12] = {0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4};
    if (m < 2) y -= 1;
    return (y + y / 4 - y / 100 + y / 400 + t[m] + d) % 7;
}

/* A clock time given in minutes after midnight on a 12-hour clock: "10 am", "4 : 30 pm", "noon". */
static void wtime(Gen *g, int minutes) {
    int h24 = minutes / 60, mm = minutes % 60;
    if (mm == 0 && h24 == 12) { w(g, "noon"); return; }
    if (mm == 0 && h24 == 0) { w(g, "midnight"); return; }
    int h12 = h24 % 12 == 0 ? 12 : h24 % 12;
    wnum(g, h12);
    if (mm) { w(g, ":"); wnum(g, mm); }
    w(g, h24 < 12 ? "am" : "pm");
}

/* A random date in 2020..2029; writes "monday , march 3" (optionally with ", 2025"). */
static void wdate(Gen *g, int with_weekday, int with_year) {
    int y = 2020 + rnd(g, 10), m = rnd(g, 12), d = 1 + rnd(g, month_days(m, y));
    if (with_weekday) { w(g, k_days[weekday(y, m, d)]); w(g, ","); }
    w(g, k_months[m]); wnum(g, d);
    if (with_year) { w(g, ","); wnum(g, y); }
}

static void gen_dates(Gen *g) {
    int a, b;
    switch (rnd(g, 9)) {
    case 0:   /* the concert is on friday , may 9 , 2025 at 8 pm */
        ws(g, PICK(g, k_events)); ws(g, "is on"); wdate(g, 1, 1); w(g, "at");
        a = 8 + rnd(g, 14);
        b = 30 * rnd(g, 2);
        wtime(g, 60 * a + b);
        break;
    case 1: { /* march 3 , 2025 is a monday */
        int y = 2020 + rnd(g, 10), m = rnd(g, 12), d = 1 + rnd(g, month_days(m, y));
        w(g, k_months[m]); wnum(g, d); w(g, ","); wnum(g, y); ws(g, "is a"); w(g, k_days[weekday(y, m, d)]);
        break;
    }
    case 2:
        a = rnd(g, 7);
        if (chance(g, 50)) { ws(g, "the day after"); w(g, k_days[a]); w(g, "is"); w(g, k_days[(a + 1) % 7]); }
        else { ws(g, "the day before"); w(g, k_days[a]); w(g, "is"); w(g, k_days[(a + 6) % 7]); }
        break;
    case 3:
        a = rnd(g, 12);
        if (chance(g, 50)) { ws(g, "the month after"); w(g, k_months[a]); w(g, "is"); w(g, k_months[(a + 1) % 12]); }
        else { ws(g, "the month before"); w(g, k_months[a]); w(g, "is"); w(g, k_months[(a + 11) % 12]); }
        break;
    case 4: { /* february 2024 has 29 days */
        int y = 2020 + rnd(g, 10), m = rnd(g, 12);
        w(g, k_months[m]); wnum(g, y); w(g, "has"); wnum(g, month_days(m, y)); w(g, "days");
        break;
    }
    case 5:   /* 3 hours after 10 am it is 1 pm */
        a = rnd(g, 24); b = 1 + rnd(g, 11);
        wnum(g, b); w(g, b == 1 ? "hour" : "hours"); w(g, "after"); wtime(g, 60 * a);
        ws(g, "it is"); wtime(g, 60 * ((a + b) % 24));
        break;
    case 6:   /* from 9 am to 5 pm is 8 hours */
        a = 6 + rnd(g, 10); b = a + 1 + rnd(g, 22 - a);
        w(g, "from"); wtime(g, 60 * a); w(g, "to"); wtime(g, 60 * b); w(g, "is"); wnum(g, b - a);
        w(g, b - a == 1 ? "hour" : "hours");
        break;
    case 7:   /* the lecture starts at 9 : 30 am on tuesday , june 3 and ends at 11 am */
        a = 7 + rnd(g, 12); b = a + 1 + rnd(g, 3);
        ws(g, PICK(g, k_events)); ws(g, "starts at"); wtime(g, 60 * a + 30 * rnd(g, 2)); w(g, "on"); wdate(g, 1, 0);
        ws(g, "and ends at"); wtime(g, 60 * b);
        break;
    default:  /* the ferry departs every thursday at 6 pm */
        ws(g, PICK(g, ((const char *const[]){"the ferry departs", "the choir rehearses", "the club convenes",
                                              "the team trains", "the bakery closes", "the bus departs",
                                              "the seminar begins"})));
        w(g, "every"); w(g, k_days[rnd(g, 7)]); w(g, "at"); wtime(g, 60 * (6 + rnd(g, 16)));
        break;
    }
}

/* ---- domain 2: a small English grammar ----------------------------------------------------------- */

/* Noun categories, used as bit masks for selectional restrictions. */
enum { CAT_H = 1, CAT_A = 2, CAT_R = 4, CAT_F = 8, CAT_T = 16, CAT_P = 32, NCAT = 6 };

typedef struct { const char *sg, *pl; } Noun;

static const Noun k_people[] = {
    {"man", "men"}, {"woman", "women"}, {"child", "children"}, {"boy", "boys"}, {"girl", "girls"},
    {"teacher", "teachers"}, {"doctor", "doctors"}, {"farmer", "farmers"}, {"student", "students"},
    {"king", "kings"}, {"queen", "queens"}, {"soldier", "soldiers"}, {"sailor", "sailors"}, {"baker", "bakers"},
    {"writer", "writers"}, {"painter", "painters"}, {"nurse", "nurses"}, {"lawyer", "lawyers"},
    {"pilot", "pilots"}, {"driver", "drivers"}, {"singer", "singers"}, {"dancer", "dancers"},
    {"friend", "friends"}, {"neighbor", "neighbors"}, {"stranger", "strangers"}, {"artist", "artists"},
    {"scientist", "scientists"}, {"engineer", "engineers"}, {"merchant", "merchants"}, {"judge", "judges"},
    {"hunter", "hunters"}, {"guard", "guards"}, {"clerk", "clerks"}, {"poet", "poets"}, {"actor", "actors"},
    {"officer", "officers"}, {"baby", "babies"}, {"prince", "princes"}, {"princess", "princesses"},
    {"thief", "thieves"},
};
static const Noun k_animals[] = {
    {"dog", "dogs"}, {"cat", "cats"}, {"horse", "horses"}, {"bird", "birds"}, {"fox", "foxes"},
    {"wolf", "wolves"}, {"bear", "bears"}, {"lion", "lions"}, {"tiger", "tigers"}, {"rabbit", "rabbits"},
    {"mouse", "mice"}, {"snake", "snakes"}, {"cow", "cows"}, {"goat", "goats"}, {"sheep", "sheep"},
    {"pig", "pigs"}, {"duck", "ducks"}, {"owl", "owls"}, {"eagle", "eagles"}, {"frog", "frogs"},
    {"monkey", "monkeys"}, {"deer", "deer"}, {"donkey", "donkeys"}, {"turtle", "turtles"},
    {"elephant", "elephants"}, {"goose", "geese"},
};
static const Noun k_readables[] = {
    {"book", "books"}, {"letter", "letters"}, {"map", "maps"}, {"story", "stories"}, {"note", "notes"},
    {"newspaper", "newspapers"}, {"poem", "poems"}, {"sign", "signs"}, {"message", "messages"},
    {"report", "reports"}, {"diary", "diaries"},
};
static const Noun k_foods[] = {
    {"apple", "apples"}, {"cake", "cakes"}, {"pie", "pies"}, {"orange", "oranges"}, {"egg", "eggs"},
    {"sandwich", "sandwiches"}, {"cookie", "cookies"}, {"pear", "pears"}, {"potato", "potatoes"},
    {"tomato", "tomatoes"}, {"loaf", "loaves"}, {"carrot", "carrots"}, {"onion", "onions"},
};
static const Noun k_things[] = {
    {"key", "keys"}, {"cup", "cups"}, {"bottle", "bottles"}, {"box", "boxes"}, {"chair", "chairs"},
    {"table", "tables"}, {"ball", "balls"}, {"ring", "rings"}, {"coin", "coins"}, {"lamp", "lamps"},
    {"clock", "clocks"}, {"bell", "bells"}, {"rope", "ropes"}, {"basket", "baskets"}, {"bag", "bags"},
    {"hat", "hats"}, {"coat", "coats"}, {"knife", "knives"}, {"hammer", "hammers"}, {"candle", "candles"},
    {"mirror", "mirrors"}, {"window", "windows"}, {"door", "doors"}, {"boat", "boats"}, {"wheel", "wheels"},
    {"blanket", "blankets"}, {"pencil", "pencils"}, {"umbrella", "umbrellas"}, {"brush", "brushes"},
    {"glass", "glasses"},
};
static const Noun k_places[] = {
    {"house", "houses"}, {"garden", "gardens"}, {"forest", "forests"}, {"river", "rivers"},
    {"city", "cities"}, {"village", "villages"}, {"market", "markets"}, {"school", "schools"},
    {"church", "churches"}, {"castle", "castles"}, {"mountain", "mountains"}, {"field", "fields"},
    {"road", "roads"}, {"bridge", "bridges"}, {"park", "parks"}, {"station", "stations"},
    {"library", "libraries"}, {"kitchen", "kitchens"}, {"harbor", "harbors"}, {"hill", "hills"},
    {"lake", "lakes"}, {"beach", "beaches"}, {"tower", "towers"}, {"farm", "farms"}, {"office", "offices"},
    {"shop", "shops"}, {"hospital", "hospitals"}, {"island", "islands"}, {"valley", "valleys"},
    {"museum", "museums"},
};

static const char *const k_adj_people[] = {"happy", "sad", "young", "old", "tall", "kind", "angry", "tired",
    "brave", "clever", "quiet", "lazy", "busy", "rich", "poor", "friendly", "hungry", "proud", "honest", "nervous"};
static const char *const k_adj_animals[] = {"small", "big", "brown", "black", "white", "wild", "hungry",
    "young", "old", "lazy", "quick", "fierce", "sleepy", "gentle", "tiny", "clever"};
static const char *const k_adj_readables[] = {"long", "short", "old", "new", "strange", "secret", "boring",
    "funny", "famous", "torn"};
static const char *const k_adj_foods[] = {"fresh", "sweet", "ripe", "warm", "cold", "delicious", "small",
    "big", "rotten", "hot"};
static const char *const k_adj_things[] = {"red", "blue", "green", "old", "new", "small", "big", "heavy",
    "broken", "clean", "dirty", "cheap", "expensive", "wooden", "golden", "shiny", "empty"};
static const char *const k_adj_places[] = {"quiet", "busy", "old", "dark", "beautiful", "small", "big",
    "distant", "empty", "crowded", "cold", "warm", "green", "ancient", "famous"};

typedef struct { const Noun *nouns; int nnouns; const char *const *adjs; int nadjs; } Category;
static const Category k_cats[NCAT] = {
    {k_people, NELEM(k_people), k_adj_people, NELEM(k_adj_people)},
    {k_animals, NELEM(k_animals), k_adj_animals, NELEM(k_adj_animals)},
    {k_readables, NELEM(k_readables), k_adj_readables, NELEM(k_adj_readables)},
    {k_foods, NELEM(k_foods), k_adj_foods, NELEM(k_adj_foods)},
    {k_things, NELEM(k_things), k_adj_things, NELEM(k_adj_things)},
    {k_places, NELEM(k_places), k_adj_places, NELEM(k_adj_places)},
};

/* A verb: base (plural present), third person singular, past; which subjects and objects it takes
 * (obj 0: intransitive). */
typedef struct { const char *base, *s3, *past; int subj, obj; } Verb;

static const Verb k_verbs[] = {
    {"see", "sees", "saw", CAT_H | CAT_A, CAT_H | CAT_A | CAT_T | CAT_P},
    {"watch", "watches", "watched", CAT_H | CAT_A, CAT_H | CAT_A},
    {"follow", "follows", "followed", CAT_H | CAT_A, CAT_H | CAT_A},
    {"chase", "chases", "chased", CAT_H | CAT_A, CAT_A},
    {"help", "helps", "helped", CAT_H, CAT_H | CAT_A},
    {"fear", "fears", "feared", CAT_H | CAT_A, CAT_H | CAT_A},
    {"love", "loves", "loved", CAT_H, CAT_H | CAT_A | CAT_P},
    {"meet", "meets", "met", CAT_H, CAT_H},
    {"call", "calls", "called", CAT_H, CAT_H | CAT_A},
    {"feed", "feeds", "fed", CAT_H, CAT_A | CAT_H},
    {"bite", "bites", "bit", CAT_A, CAT_H | CAT_A},
    {"find", "finds", "found", CAT_H | CAT_A, CAT_R | CAT_F | CAT_T},
    {"read", "reads", "read", CAT_H, CAT_R},
    {"write", "writes", "wrote", CAT_H, CAT_R},
    {"eat", "eats", "ate", CAT_H | CAT_A, CAT_F},
    {"cook", "cooks", "cooked", CAT_H, CAT_F},
    {"buy", "buys", "bought", CAT_H, CAT_R | CAT_F | CAT_T},
    {"sell", "sells", "sold", CAT_H, CAT_R | CAT_F | CAT_T},
    {"carry", "carries", "carried", CAT_H | CAT_A, CAT_F | CAT_T},
    {"hold", "holds", "held", CAT_H, CAT_R | CAT_F | CAT_T},
    {"open", "opens", "opened", CAT_H, CAT_R | CAT_T},
    {"break", "breaks", "broke", CAT_H | CAT_A, CAT_T},
    {"fix", "fixes", "fixed", CAT_H, CAT_T},
    {"clean", "cleans", "cleaned", CAT_H, CAT_T | CAT_P},
    {"paint", "paints", "painted", CAT_H, CAT_T | CAT_P},
    {"bring", "brings", "brought", CAT_H | CAT_A, CAT_R | CAT_F | CAT_T},
    {"want", "wants", "wanted", CAT_H | CAT_A, CAT_F | CAT_T},
    {"visit", "visits", "visited", CAT_H, CAT_P | CAT_H},
    {"leave", "leaves", "left", CAT_H | CAT_A, CAT_P},
    {"build", "builds", "built", CAT_H, CAT_P | CAT_T},
    {"lose", "loses", "lost", CAT_H, CAT_R | CAT_T},
    {"drop", "drops", "dropped", CAT_H | CAT_A, CAT_R | CAT_F | CAT_T},
    {"sleep", "sleeps", "slept", CAT_H | CAT_A, 0},
    {"run", "runs", "ran", CAT_H | CAT_A, 0},
    {"walk", "walks", "walked", CAT_H | CAT_A, 0},
    {"sing", "sings", "sang", CAT_H, 0},
    {"laugh", "laughs", "laughed", CAT_H, 0},
    {"wait", "waits", "waited", CAT_H | CAT_A, 0},
    {"sit", "sits", "sat", CAT_H | CAT_A, 0},
    {"dance", "dances", "danced", CAT_H, 0},
    {"cry", "cries", "cried", CAT_H, 0},
    {"smile", "smiles", "smiled", CAT_H, 0},
    {"swim", "swims", "swam", CAT_H | CAT_A, 0},
    {"jump", "jumps", "jumped", CAT_H | CAT_A, 0},
    {"work", "works", "worked", CAT_H, 0},
    {"talk", "talks", "talked", CAT_H, 0},
    {"rest", "rests", "rested", CAT_H | CAT_A, 0},
    {"shout", "shouts", "shouted", CAT_H, 0},
    {"hide", "hides", "hid", CAT_H | CAT_A, 0},
};

static const char *const k_det_sg[] = {"the", "the", "the", "a", "a", "every", "this", "that", "my", "your",
                                       "his", "her", "our", "their", "one", "each", "no"};
static const char *const k_det_pl[] = {"the", "the", "the", "some", "many", "these", "those", "my", "your",
                                       "his", "her", "our", "their", "two", "three", "few", "several", "all"};
static const char *const k_preps[] = {"in", "near", "behind", "beside", "across", "through", "inside",
                                      "outside", "around", "toward", "from", "by", "at"};
static const char *const k_manner[] = {"quickly", "slowly", "quietly", "happily", "carefully", "suddenly",
                                       "loudly", "often", "again"};
static const char *const k_when_past[] = {"yesterday", "last night", "last week", "long ago"};
static const char *const k_when_present[] = {"every day", "every morning", "now", "today"};

static int is_vowel(char c) { return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u'; }

/* A random category among those in mask. */
static int pick_cat(Gen *g, int mask) {
    int cats[NCAT], k = 0;
    for (int c = 0; c < NCAT; c++) if (mask & (1 << c)) cats[k++] = c;
    CHECK(k > 0);
    return cats[rnd(g, k)];
}

/* A noun phrase of category c: determiner (a -> an before a vowel), optional adjective, noun. */
static void wnp(Gen *g, int c, int plural, int adj_percent) {
    const Category *cat = &k_cats[c];
    const char *det = plural ? PICK(g, k_det_pl) : PICK(g, k_det_sg);
    const char *adj = chance(g, adj_percent) ? cat->adjs[rnd(g, cat->nadjs)] : NULL;
    const Noun *nn = &cat->nouns[rnd(g, cat->nnouns)];
    const char *noun = plural ? nn->pl : nn->sg;
    const char *next = adj ? adj : noun;
    if (strcmp(det, "a") == 0 && is_vowel(next[0])) det = "an";
    w(g, det);
    if (adj) w(g, adj);
    w(g, noun);
}

static const Verb *pick_verb(Gen *g, int subj_cat, int transitive) {
    for (;;) {   /* rejection sampling; every category has both kinds for H and A subjects */
        const Verb *v = &k_verbs[rnd(g, NELEM(k_verbs))];
        if ((v->subj & (1 << subj_cat)) && ((v->obj != 0) == transitive)) return v;
    }
}

static const char *verb_form(const Verb *v, int past, int plural) { return past ? v->past : plural ? v->base : v->s3; }

/* A prepositional phrase with a place: "near the old river". */
static void wpp(Gen *g) {
    w(g, PICK(g, k_preps));
    wnp(g, 5, chance(g, 15), 30);
}

/* A verb phrase agreeing with (plural, past): a transitive or intransitive verb with its object. */
static void wvp(Gen *g, int subj_cat, int plural, int past) {
    int transitive = chance(g, 65);
    const Verb *v = pick_verb(g, subj_cat, transitive);
    w(g, verb_form(v, past, plural));
    if (transitive) {
        int oc = pick_cat(g, v->obj);   /* separate statements: argument evaluation order is unspecified */
        wnp(g, oc, chance(g, 30), 35);
    }
}

/* A clause: subject (H or A), optionally with a relative clause, verb phrase, optional PP and adverb. */
static void wclause(Gen *g, int past) {
    int sc = chance(g, 60) ? 0 : 1, plural = chance(g, 35);
    wnp(g, sc, plural, 35);
    if (chance(g, 12)) {
        w(g, sc == 0 ? "who" : "that");
        wvp(g, sc, plural, past);
    }
    wvp(g, sc, plural, past);
    if (chance(g, 35)) wpp(g);
    if (chance(g, 15)) w(g, PICK(g, k_manner));
    if (chance(g, 20)) ws(g, past ? PICK(g, k_when_past) : PICK(g, k_when_present));
}

static void gen_grammar(Gen *g) {
    int past = chance(g, 45);
    int r = rnd(g, 100);
    if (r < 45) {
        wclause(g, past);
    } else if (r < 58) {          /* the old man was tired */
        int c = pick_cat(g, CAT_H | CAT_A | CAT_R | CAT_F | CAT_T | CAT_P), plural = chance(g, 35);
        wnp(g, c, plural, 25);
        w(g, past ? (plural ? "were" : "was") : (plural ? "are" : "is"));
        if (chance(g, 25)) w(g, "very");
        w(g, k_cats[c].adjs[rnd(g, k_cats[c].nadjs)]);
    } else if (r < 68) {          /* there is a red box in the kitchen */
        int c = pick_cat(g, CAT_H | CAT_A | CAT_R | CAT_F | CAT_T), plural = chance(g, 40);
        w(g, "there");
        w(g, past ? (plural ? "were" : "was") : (plural ? "are" : "is"));
        const Category *cat = &k_cats[c];
        const char *adj = chance(g, 40) ? cat->adjs[rnd(g, cat->nadjs)] : NULL;
        const Noun *nn = &cat->nouns[rnd(g, cat->nnouns)];
        const char *noun = plural ? nn->pl : nn->sg;
        if (plural) w(g, PICK(g, ((const char *const[]){"some", "many", "two", "three", "no", "several"})));
        else w(g, is_vowel((adj ? adj : noun)[0]) ? "an" : "a");
        if (adj) w(g, adj);
        w(g, noun);
        w(g, PICK(g, ((const char *const[]){"in", "near", "behind", "inside", "outside", "at"})));
        wnp(g, 5, 0, 30);
    } else if (r < 78) {          /* does the dog see the cat ? */
        int sc = chance(g, 60) ? 0 : 1, plural = chance(g, 35);
        w(g, past ? "did" : (plural ? "do" : "does"));
        wnp(g, sc, plural, 30);
        int transitive = chance(g, 65);
        const Verb *v = pick_verb(g, sc, transitive);
        w(g, v->base);
        if (transitive) {
            int oc = pick_cat(g, v->obj);
            wnp(g, oc, chance(g, 30), 30);
        }
        if (chance(g, 25)) wpp(g);
        w(g, "?");
    } else {                      /* two clauses, same tense */
        int k = rnd(g, 4);
        if (k == 3) {
            w(g, "when"); wclause(g, past); w(g, ","); wclause(g, past);
        } else {
            wclause(g, past);
            w(g, k == 0 ? "and" : k == 1 ? "but" : "because");
            wclause(g, past);
        }
    }
}

/* ---- domain 3: code ------------------------------------------------------------------------------ */

static const char *const k_vars[] = {"x", "y", "z", "i", "j", "k", "n", "m", "p", "q", "r", "s", "t", "u", "v",
                                     "total", "count", "idx", "acc", "res", "tmp", "val", "buf", "lo", "hi", "mid"};
static const char *const k_cmp[] = {"<", ">", "<=", ">=", "==", "!="};
static const char *const k_arith[] = {"+", "-", "*", "/", "%"};

/* A function with a fixed body; P1 and P2 stand for its parameters. */
typedef struct { const char *name; int nparams; const char *body; } CodeFn;
static const CodeFn k_fns[] = {
    {"add", 2, "return P1 + P2 ;"},
    {"sub", 2, "return P1 - P2 ;"},
    {"mul", 2, "return P1 * P2 ;"},
    {"max", 2, "if P1 > P2 { return P1 ; } return P2 ;"},
    {"min", 2, "if P1 < P2 { return P1 ; } return P2 ;"},
    {"avg", 2, "return ( P1 + P2 ) / 2 ;"},
    {"square", 1, "return P1 * P1 ;"},
    {"twice", 1, "return P1 + P1 ;"},
    {"inc", 1, "return P1 + 1 ;"},
    {"dec", 1, "return P1 - 1 ;"},
    {"neg", 1, "return 0 - P1 ;"},
    {"half", 1, "return P1 / 2 ;"},
    {"abs", 1, "if P1 < 0 { return 0 - P1 ; } return P1 ;"},
    {"is_even", 1, "return P1 % 2 == 0 ;"},
    {"swap", 2, "tmp = P1 ; P1 = P2 ; P2 = tmp ;"},
};

static const char *pick_var_except(Gen *g, const char *not1, const char *not2) {
    for (;;) {
        const char *v = PICK(g, k_vars);
        if ((!not1 || strcmp(v, not1) != 0) && (!not2 || strcmp(v, not2) != 0)) return v;
    }
}

static void wterm(Gen *g) {
    if (chance(g, 55)) w(g, PICK(g, k_vars));
    else wnum(g, rnd(g, 20));
}

static void wexpr(Gen *g) {
    int r = rnd(g, 10);
    if (r < 3) { wterm(g); return; }
    if (r < 8) { wterm(g); w(g, PICK(g, k_arith)); wterm(g); return; }
    w(g, "("); wterm(g); w(g, PICK(g, k_arith)); wterm(g); w(g, ")"); w(g, PICK(g, k_arith)); wterm(g);
}

static void wassign(Gen *g) { w(g, PICK(g, k_vars)); w(g, "="); wexpr(g); w(g, ";"); }

static void gen_code(Gen *g) {
    const char *a, *b;
    switch (rnd(g, 10)) {
    case 0:
        wassign(g);
        break;
    case 1:   /* if x > 3 { y = x + 1 ; } */
        a = PICK(g, k_vars);
        w(g, "if"); w(g, a); w(g, PICK(g, k_cmp)); wnum(g, rnd(g, 20)); w(g, "{");
        w(g, PICK(g, k_vars)); w(g, "="); w(g, a); w(g, PICK(g, k_arith)); wterm(g); w(g, ";"); w(g, "}");
        break;
    case 2:   /* if x < y { ... } else { ... } */
        a = PICK(g, k_vars); b = pick_var_except(g, a, NULL);
        w(g, "if"); w(g, a); w(g, PICK(g, k_cmp)); w(g, b);
        w(g, "{"); wassign(g); w(g, "}"); w(g, "else"); w(g, "{"); wassign(g); w(g, "}");
        break;
    case 3:   /* for i in range ( 10 ) { s = s + i ; } */
        a = PICK(g, ((const char *const[]){"i", "j", "k", "idx"}));
        b = pick_var_except(g, a, NULL);
        ws(g, "for"); w(g, a); ws(g, "in range ("); wnum(g, 1 + rnd(g, 99)); w(g, ")");
        w(g, "{"); w(g, b); w(g, "="); w(g, b); w(g, PICK(g, ((const char *const[]){"+", "*", "-"}))); w(g, a);
        w(g, ";"); w(g, "}");
        break;
    case 4:   /* while n > 0 { n = n - 1 ; } */
        a = PICK(g, k_vars);
        if (chance(g, 50)) {
            w(g, "while"); w(g, a); w(g, ">"); w(g, "0"); w(g, "{"); w(g, a); w(g, "="); w(g, a); w(g, "-"); w(g, "1");
        } else {
            int lim = 1 + rnd(g, 99);
            w(g, "while"); w(g, a); w(g, "<"); wnum(g, lim); w(g, "{"); w(g, a); w(g, "="); w(g, a); w(g, "+"); w(g, "1");
        }
        w(g, ";"); w(g, "}");
        break;
    case 5: { /* def max ( p , q ) { if p > q { return p ; } return q ; } */
        const CodeFn *f = &k_fns[rnd(g, NELEM(k_fns))];
        a = pick_var_except(g, "tmp", NULL);
        b = pick_var_except(g, a, "tmp");
        w(g, "def"); w(g, f->name); w(g, "("); w(g, a);
        if (f->nparams == 2) { w(g, ","); w(g, b); }
        w(g, ")"); w(g, "{");
        const char *s = f->body;
        char word[32];
        while (*s) {   /* the body with P1 -> a, P2 -> b */
            size_t k = 0;
            while (s[k] && s[k] != ' ') k++;
            snprintf(word, sizeof word, "%.*s", (int)k, s);
            w(g, strcmp(word, "P1") == 0 ? a : strcmp(word, "P2") == 0 ? b : word);
            s += k;
            while (*s == ' ') s++;
        }
        w(g, "}");
        break;
    }
    case 6: { /* y = max ( x , 3 ) ; */
        const CodeFn *f = &k_fns[rnd(g, NELEM(k_fns) - 1)];   /* not swap: it returns nothing */
        w(g, PICK(g, k_vars)); w(g, "="); w(g, f->name); w(g, "("); wterm(g);
        if (f->nparams == 2) { w(g, ","); wterm(g); }
        w(g, ")"); w(g, ";");
        break;
    }
    case 7:   /* print ( x ) ; */
        w(g, "print"); w(g, "("); w(g, PICK(g, k_vars)); w(g, ")"); w(g, ";");
        break;
    case 8: { /* let x = 3 ; let y = x + 4 ; assert y == 7 ; */
        int va = rnd(g, 20), vb = rnd(g, 20), op = rnd(g, 3);
        if (op == 1 && vb > va) { int t = va; va = vb; vb = t; }
        int vr = op == 0 ? va + vb : op == 1 ? va - vb : va * vb;
        a = PICK(g, k_vars); b = pick_var_except(g, a, NULL);
        w(g, "let"); w(g, a); w(g, "="); wnum(g, va); w(g, ";");
        w(g, "let"); w(g, b); w(g, "="); w(g, a); w(g, op == 0 ? "+" : op == 1 ? "-" : "*"); wnum(g, vb); w(g, ";");
        w(g, "assert"); w(g, b); w(g, "=="); wnum(g, vr); w(g, ";");
        break;
    }
    default: { /* let xs = [ 3 , 1 , 4 ] ; */
        int len = 1 + rnd(g, 5);
        w(g, "let"); w(g, PICK(g, k_vars)); w(g, "="); w(g, "[");
        for (int i = 0; i < len; i++) { if (i) w(g, ","); wnum(g, rnd(g, 10)); }
        w(g, "]"); w(g, ";");
        break;
    }
    }
}

/* ---- driver -------------------------------------------------------------------------------------- */

const char *builtin_domain_name(int d) {
    static const char *const names[BUILTIN_DOMAINS] = {"arithmetic", "dates", "grammar", "code"};
    return d >= 0 && d < BUILTIN_DOMAINS ? names[d] : "?";
}

/* One fixed seed per split; changing them changes the corpus (and every result measured on it). */
static const uint64_t k_split_seed[3] = {0x6d6f656c6d747261ull, 0x6d6f656c6d76616cull, 0x6d6f656c6d746573ull};

moelm_status builtin_generate(char **text, size_t *n, int split, size_t approx_bytes, int **line_domain, size_t *nlines) {
    *text = NULL;
    *n = 0;
    if (line_domain) *line_domain = NULL;
    if (nlines) *nlines = 0;
    if (split < 0 || split > 2)
        return moelm_fail(MOELM_ERR_CONFIG, "builtin corpus: split %d does not exist (0 train, 1 valid, 2 test)", split);

    Gen g = {.at_line_start = 1};
    rng_seed(&g.rng, k_split_seed[split]);
    g.cap = approx_bytes + 512;
    g.p = moelm_malloc(g.cap);
    if (!g.p) return moelm_fail_context(MOELM_ERR_NOMEM, "builtin corpus");
    g.p[0] = '\0';

    int *dom = NULL;
    size_t ndom = 0, capdom = 0;
    if (line_domain) {
        capdom = approx_bytes / 24 + 16;
        dom = moelm_malloc(capdom * sizeof *dom);
        if (!dom) { moelm_free(g.p); return moelm_fail_context(MOELM_ERR_NOMEM, "builtin corpus"); }
    }

    while (g.n < approx_bytes && !g.failed) {
        int d = rnd(&g, BUILTIN_DOMAINS);
        switch (d) {
        case 0: gen_arithmetic(&g); break;
        case 1: gen_dates(&g); break;
        case 2: gen_grammar(&g); break;
        default: gen_code(&g); break;
        }
        eol(&g);
        if (dom) {
            if (ndom == capdom) {
                int *q = moelm_realloc(dom, 2 * capdom * sizeof *dom);
                if (!q) { g.failed = 1; break; }
                dom = q;
                capdom *= 2;
            }
            dom[ndom++] = d;
        }
    }
    if (g.failed) {
        moelm_free(g.p);
        moelm_free(dom);
        return moelm_fail_context(MOELM_ERR_NOMEM, "builtin corpus");
    }
    *text = g.p;
    *n = g.n;
    if (line_domain) {
        *line_domain = dom;
        if (nlines) *nlines = ndom;
    }
    return MOELM_OK;
}
