/* keys.h: the keys of an experiment, model and training alike: what each means, which are training
 * keys, the nearest one to a misspelt key ("did you mean"), and the listing of `moelm train
 * --print-config`. The lists are here; the parsers are config_set and train_config_set. */
#ifndef MOELM_TRAIN_KEYS_H
#define MOELM_TRAIN_KEYS_H

#include <stdio.h>
#include "common/util.h"

/* Whether key is a training key (train_config_set's), not a model key. */
int key_is_training(const char *key);
/* Whether key is a model key (config_set's). */
int key_is_model(const char *key);
/* The known key nearest to a misspelt one, or NULL when none is near. */
const char *key_nearest(const char *key);
/* Fails with "<where>unknown key 'KEY' (did you mean ...)": MOELM_ERR_CONFIG. */
moelm_status key_unknown(const char *where, const char *key);
/* Prints every key of the two JSON objects (config_to_json's, the training settings') with its
 * value and meaning. */
moelm_status keys_print(const char *model_json, const char *train_json, FILE *f);

#endif
