# blurvid — make help lists the targets.
#   make install   virtual environment in .venv from this repo's own files
#   make demo      make a sample clip and blur its background into output/
#   make test      the test suite (what CI runs)
#   make browser   headless Chromium for the gallery's browser test (make test does it first)
#   make batch     every video in data/ -> output/ (make -j2 batch runs two at once)
#   make bench     speed benchmark against the reference pipeline
#   make model     rebuild the training data from ../shared and retrain the default model (hours on CPU)
#   make model-gpu train a candidate from scratch on a CUDA GPU (minutes) and score it

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BLURVID := $(BIN)/blurvid
SHARED ?= ../shared
MODEL := pipeline/models/person-unet-r18.safetensors
DATA_CACHE ?= $(HOME)/.cache/blurvid/data
PROCESS_FLAGS ?=

VIDEOS := $(wildcard data/*.mp4 data/*.mov data/*.mkv data/*.webm data/*.mpg data/*.avi)
OUTPUTS := $(patsubst data/%,output/%.mp4,$(basename $(VIDEOS)))

.PHONY: help install demo test browser batch bench model model-gpu clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/activate: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,sample,teacher]'
	touch $@

install: $(BIN)/activate  ## create .venv with blurvid and its dependencies

output/sample.mp4: | $(BIN)/activate
	$(BIN)/python -m pipeline.sample $@

demo: output/sample.mp4 $(BIN)/activate  ## make a sample clip and blur its background -> output/sample_blurred.mp4
	$(BLURVID) process output/sample.mp4 -o output/sample_blurred.mp4 --overwrite --thumb-every 10
	$(BLURVID) preview output/sample_blurred_thumbs

# Headless Chromium for tests/test_preview_browser.py, which skips without one. Nothing to do when a
# browser is on PATH; apt-get installs Debian's chromium as root or through sudo; anything else gets
# a one-line note and the build carries on.
BROWSERS := chromium chromium-browser google-chrome google-chrome-stable
browser:  ## install Chromium for the gallery's browser test (a note, not a failure, where it cannot)
	@for b in $(BROWSERS); do command -v $$b >/dev/null && exit 0; done; \
	if ! command -v apt-get >/dev/null; then sudo=none; \
	elif [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=sudo; \
	else sudo=none; fi; \
	if [ "$$sudo" = none ]; then \
		echo "make browser: no Chromium, and no apt-get as root here: install one to run the browser test"; \
		exit 0; \
	fi; \
	apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -q -y"; \
	echo "make browser: installing chromium with apt-get"; \
	{ $$apt install --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$apt update >/dev/null 2>&1 && $$apt install --no-install-recommends chromium >/dev/null 2>&1; }; } || \
	echo "make browser: apt-get could not install chromium; the browser test will be skipped"

test: $(BIN)/activate browser  ## run the test suite
	$(BIN)/python -m pytest -q

batch: $(OUTPUTS)  ## every video in data/ -> output/NAME.mp4 (make -j2 batch for two at once)

# One pattern rule per input extension: make picks the one whose source exists.
define video_rule
output/%.mp4: data/%.$(1) $$(MODEL) | $$(BIN)/activate
	$$(BLURVID) process $$< -o $$@ --overwrite --quiet $$(PROCESS_FLAGS)
endef
$(foreach ext,mp4 mov mkv webm mpg avi,$(eval $(call video_rule,$(ext))))

bench: $(BIN)/activate  ## benchmark against the reference pipeline (writes output/bench.json)
	$(BIN)/python -m pipeline.bench --shared $(SHARED) --json output/bench.json

# The shipped model's recipe (MODEL.md): three one-cycle stages, each fine-tuning the one before, then
# three short fine-tunes of the last stage (two in a chain, one on its own), the mean of the four
# models' weights (`blurvid soup`), and 15 epochs more from that mean (stage 7); then 5 epochs more
# (stage 8), the mean of stages 7 and 8, 6 epochs at a lower rate from it (stage 9), and one epoch
# on the data with the video frames weighted 4x (stage 10), 4 epochs more on that data (stage 11)
# and the mean of stages 10 and 11, then 28 epochs from that mean on the plain data (stage 12), 16
# epochs more (stage 13) and the mean of stages 12 and 13; then, on the same images stored at 384 px
# and with the cross-entropy + Dice loss, 14 epochs of 160-px crops (stage 14), 11 of 128-px crops
# (stage 15), 4 more (stage 16), the mean of stages 15 and 16, and from that mean 12 epochs at a
# constant rate whose mean weights are kept (stage 18, `--swa`), from stage 18 30 more such
# epochs at twice its rate (stage 19, `--swa`), and from stage 19 19 more at three times its rate
# (stage 20, `--swa`: v14); from v14 9 epochs of stage 19's recipe with the geometric augmentations
# kept off the CCP-derived images (stage 25, `--no-geometry`) and the mean of v14 and stage 25 (v15);
# from v15 5 epochs of the same (stage 26) and the mean of v15 and stage 26 (v16); from v16 32 epochs
# of the same at half the rate (stage 28) and from stage 28 15 more (stage 30: v17); from v17 4
# epochs of the same on the view with the CCP photos, their crops and the video frames twice each
# (stage 35) and the mean of v17 and stage 35 (v18); from v18 6 epochs of the same with crops of
# at least 0.7 of an image, so that people appear at the size the working size gives them (stage
# 37, `--min-scale`), and the mean of v18 and stage 37 (v19); from v19 2 epochs of the same with
# 144-px crops of at least 0.8 of an image (stage 41) and the mean of v19 and stage 41 (v20); from
# v20 2 epochs of the same on a view in which the quarter of each kind of human-labelled photo that
# v20 segments worst appears twice as often again (stage 43, pipeline.hardmining) and the mean of
# v20 and stage 43 (v21); from v21 2 epochs of the same at 2e-4 on the view v21 mines the same way,
# its weights averaged after every 40th batch (stage 51, --swa-every), and the mean of v21 and stage
# 51 (v22, the shipped model). The runs of stages 8, 9, 11, 12, 13, 28, 30, 41 and 43
# also began with one warm-up epoch at a tenth of the rate (`--minutes`); these fixed epoch counts
# leave it out.
# Training data and the intermediate stages stay outside the repo, in $(DATA_CACHE), $(DATA384_CACHE)
# and $(RUNS).
DATAPREP_FLAGS ?= --max-side 256 --quality 75
DATA384_CACHE ?= $(DATA_CACHE)-384
DATAPREP384_FLAGS ?= --max-side 384 --quality 90
RUNS ?= $(HOME)/.cache/blurvid/runs/make-model
TRAIN_FLAGS := --bs 16 --work-size 192x112
TRAIN := $(BLURVID) train $(DATA_CACHE)/train $(TRAIN_FLAGS)
STAGE1_FLAGS ?= --epochs 1 --size 112 --lr 4e-3
STAGE2_FLAGS ?= --epochs 2 --size 96 --lr 1e-3
STAGE3_FLAGS ?= --epochs 8 --size 128 --lr 1e-3
FINETUNE_FLAGS ?= --epochs 4 --size 128 --lr 5e-4
STAGE7_FLAGS ?= --epochs 15 --size 128 --lr 1e-3
STAGE8_FLAGS ?= --epochs 5 --size 128 --lr 1e-3
STAGE9_FLAGS ?= --epochs 6 --size 128 --lr 3e-4
STAGE10_FLAGS ?= --epochs 1 --size 128 --lr 1e-4
STAGE11_FLAGS ?= --epochs 4 --size 128 --lr 3e-4
STAGE12_FLAGS ?= --epochs 28 --size 128 --lr 3e-4
STAGE13_FLAGS ?= --epochs 16 --size 128 --lr 3e-4
STAGE14_FLAGS ?= --epochs 14 --size 160 --lr 3e-4 --loss ce+dice
STAGE15_FLAGS ?= --epochs 11 --size 128 --lr 3e-4 --loss ce+dice
STAGE16_FLAGS ?= --epochs 4 --size 128 --lr 3e-4 --loss ce+dice
STAGE18_FLAGS ?= --epochs 12 --size 128 --lr 1e-4 --loss ce+dice --swa
STAGE19_FLAGS ?= --epochs 30 --size 128 --lr 2e-4 --loss ce+dice --swa
STAGE20_FLAGS ?= --epochs 19 --size 128 --lr 3e-4 --loss ce+dice --swa
# Stages 25 to 41 share one recipe, which keeps rotation, zoom and warp off the CCP-derived images
# (street photos); they differ in length and rate, and stages 37 and 41 in their crops.
CCP_NO_GEOMETRY := --no-geometry ccp_ --no-geometry ccpcrop_ --no-geometry compphoto_
SWA_NO_GEOMETRY := --loss ce+dice --swa $(CCP_NO_GEOMETRY)
SWA_NO_GEOMETRY_RECIPE := --size 128 $(SWA_NO_GEOMETRY)
STAGE25_FLAGS ?= --epochs 9 --lr 2e-4 $(SWA_NO_GEOMETRY_RECIPE)
STAGE26_FLAGS ?= --epochs 5 --lr 2e-4 $(SWA_NO_GEOMETRY_RECIPE)
STAGE28_FLAGS ?= --epochs 32 --lr 1e-4 $(SWA_NO_GEOMETRY_RECIPE)
STAGE30_FLAGS ?= --epochs 15 --lr 1e-4 $(SWA_NO_GEOMETRY_RECIPE)
STAGE35_FLAGS ?= --epochs 4 --lr 1e-4 $(SWA_NO_GEOMETRY_RECIPE)
STAGE37_FLAGS ?= --epochs 6 --lr 1e-4 --min-scale 0.7 $(SWA_NO_GEOMETRY_RECIPE)
STAGE41_FLAGS ?= --epochs 2 --lr 1e-4 --size 144 --min-scale 0.8 $(SWA_NO_GEOMETRY)
STAGE43_FLAGS ?= $(STAGE41_FLAGS)
# Stage 51: stage 43's recipe at twice the rate, its weights averaged after every 40th batch (--swa-every).
STAGE51_FLAGS ?= --epochs 2 --lr 2e-4 --size 144 --min-scale 0.8 --swa-every 40 $(SWA_NO_GEOMETRY)
TRAIN384 := $(BLURVID) train $(DATA384_CACHE)/train $(TRAIN_FLAGS)
TRAIN_VIDEO_WEIGHTED := $(BLURVID) train $(DATA_CACHE)/train-video-weighted $(TRAIN_FLAGS)
TRAIN384_CCP_CLIP_WEIGHTED := $(BLURVID) train $(DATA384_CACHE)/train-ccp-clip-weighted $(TRAIN_FLAGS)
TRAIN384_HARD_WEIGHTED := $(BLURVID) train $(DATA384_CACHE)/train-hard-weighted $(TRAIN_FLAGS)
TRAIN384_HARD_WEIGHTED_V21 := $(BLURVID) train $(DATA384_CACHE)/train-hard-weighted-v21 $(TRAIN_FLAGS)

model: $(BIN)/activate  ## rebuild training data from ../shared and retrain the default model (hours on CPU)
	$(SHARED)/tools/get-teacher.sh
	$(BIN)/python -m pipeline.dataprep --shared $(SHARED) --out $(DATA_CACHE) $(DATAPREP_FLAGS)
	$(BIN)/python -m pipeline.dataprep --shared $(SHARED) --out $(DATA384_CACHE) $(DATAPREP384_FLAGS)
	$(TRAIN) -o $(RUNS)/stage1.safetensors $(STAGE1_FLAGS) --checkpoint-dir $(RUNS)/checkpoints1
	$(TRAIN) -o $(RUNS)/stage2.safetensors $(STAGE2_FLAGS) --checkpoint-dir $(RUNS)/checkpoints2 \
		--from $(RUNS)/stage1.safetensors
	$(TRAIN) -o $(RUNS)/stage3.safetensors $(STAGE3_FLAGS) --checkpoint-dir $(RUNS)/checkpoints3 \
		--from $(RUNS)/stage2.safetensors
	$(TRAIN) -o $(RUNS)/tune-a1.safetensors $(FINETUNE_FLAGS) --checkpoint-dir $(RUNS)/checkpoints-a1 \
		--from $(RUNS)/stage3.safetensors
	$(TRAIN) -o $(RUNS)/tune-a2.safetensors $(FINETUNE_FLAGS) --checkpoint-dir $(RUNS)/checkpoints-a2 \
		--from $(RUNS)/tune-a1.safetensors
	$(TRAIN) -o $(RUNS)/tune-b1.safetensors $(FINETUNE_FLAGS) --checkpoint-dir $(RUNS)/checkpoints-b1 \
		--from $(RUNS)/stage3.safetensors
	$(BLURVID) soup $(RUNS)/stage3.safetensors $(RUNS)/tune-a1.safetensors $(RUNS)/tune-a2.safetensors \
		$(RUNS)/tune-b1.safetensors -o $(RUNS)/soup.safetensors
	$(TRAIN) -o $(RUNS)/stage7.safetensors $(STAGE7_FLAGS) --checkpoint-dir $(RUNS)/checkpoints7 \
		--from $(RUNS)/soup.safetensors
	$(TRAIN) -o $(RUNS)/stage8.safetensors $(STAGE8_FLAGS) --checkpoint-dir $(RUNS)/checkpoints8 \
		--from $(RUNS)/stage7.safetensors
	$(BLURVID) soup $(RUNS)/stage7.safetensors $(RUNS)/stage8.safetensors -o $(RUNS)/soup78.safetensors
	$(TRAIN) -o $(RUNS)/stage9.safetensors $(STAGE9_FLAGS) --checkpoint-dir $(RUNS)/checkpoints9 \
		--from $(RUNS)/soup78.safetensors
	$(TRAIN_VIDEO_WEIGHTED) -o $(RUNS)/stage10.safetensors $(STAGE10_FLAGS) \
		--checkpoint-dir $(RUNS)/checkpoints10 --from $(RUNS)/stage9.safetensors
	$(TRAIN_VIDEO_WEIGHTED) -o $(RUNS)/stage11.safetensors $(STAGE11_FLAGS) \
		--checkpoint-dir $(RUNS)/checkpoints11 --from $(RUNS)/stage10.safetensors
	$(BLURVID) soup $(RUNS)/stage10.safetensors $(RUNS)/stage11.safetensors -o $(RUNS)/soup1011.safetensors
	$(TRAIN) -o $(RUNS)/stage12.safetensors $(STAGE12_FLAGS) --checkpoint-dir $(RUNS)/checkpoints12 \
		--from $(RUNS)/soup1011.safetensors
	$(TRAIN) -o $(RUNS)/stage13.safetensors $(STAGE13_FLAGS) --checkpoint-dir $(RUNS)/checkpoints13 \
		--from $(RUNS)/stage12.safetensors
	$(BLURVID) soup $(RUNS)/stage12.safetensors $(RUNS)/stage13.safetensors -o $(RUNS)/soup1213.safetensors
	$(TRAIN384) -o $(RUNS)/stage14.safetensors $(STAGE14_FLAGS) --checkpoint-dir $(RUNS)/checkpoints14 \
		--from $(RUNS)/soup1213.safetensors
	$(TRAIN384) -o $(RUNS)/stage15.safetensors $(STAGE15_FLAGS) --checkpoint-dir $(RUNS)/checkpoints15 \
		--from $(RUNS)/stage14.safetensors
	$(TRAIN384) -o $(RUNS)/stage16.safetensors $(STAGE16_FLAGS) --checkpoint-dir $(RUNS)/checkpoints16 \
		--from $(RUNS)/stage15.safetensors
	$(BLURVID) soup $(RUNS)/stage15.safetensors $(RUNS)/stage16.safetensors -o $(RUNS)/soup1516.safetensors
	$(TRAIN384) -o $(RUNS)/stage18.safetensors $(STAGE18_FLAGS) --checkpoint-dir $(RUNS)/checkpoints18 \
		--from $(RUNS)/soup1516.safetensors
	$(TRAIN384) -o $(RUNS)/stage19.safetensors $(STAGE19_FLAGS) --checkpoint-dir $(RUNS)/checkpoints19 \
		--from $(RUNS)/stage18.safetensors
	$(TRAIN384) -o $(RUNS)/stage20.safetensors $(STAGE20_FLAGS) --checkpoint-dir $(RUNS)/checkpoints20 \
		--from $(RUNS)/stage19.safetensors
	$(TRAIN384) -o $(RUNS)/stage25.safetensors $(STAGE25_FLAGS) --checkpoint-dir $(RUNS)/checkpoints25 \
		--from $(RUNS)/stage20.safetensors
	$(BLURVID) soup $(RUNS)/stage20.safetensors $(RUNS)/stage25.safetensors -o $(RUNS)/soup2025.safetensors
	$(TRAIN384) -o $(RUNS)/stage26.safetensors $(STAGE26_FLAGS) --checkpoint-dir $(RUNS)/checkpoints26 \
		--from $(RUNS)/soup2025.safetensors
	$(BLURVID) soup $(RUNS)/soup2025.safetensors $(RUNS)/stage26.safetensors -o $(RUNS)/soup2526.safetensors
	$(TRAIN384) -o $(RUNS)/stage28.safetensors $(STAGE28_FLAGS) --checkpoint-dir $(RUNS)/checkpoints28 \
		--from $(RUNS)/soup2526.safetensors
	$(TRAIN384) -o $(RUNS)/stage30.safetensors $(STAGE30_FLAGS) --checkpoint-dir $(RUNS)/checkpoints30 \
		--from $(RUNS)/stage28.safetensors
	$(TRAIN384_CCP_CLIP_WEIGHTED) -o $(RUNS)/stage35.safetensors $(STAGE35_FLAGS) \
		--checkpoint-dir $(RUNS)/checkpoints35 --from $(RUNS)/stage30.safetensors
	$(BLURVID) soup $(RUNS)/stage30.safetensors $(RUNS)/stage35.safetensors -o $(RUNS)/soup3035.safetensors
	$(TRAIN384_CCP_CLIP_WEIGHTED) -o $(RUNS)/stage37.safetensors $(STAGE37_FLAGS) \
		--checkpoint-dir $(RUNS)/checkpoints37 --from $(RUNS)/soup3035.safetensors
	$(BLURVID) soup $(RUNS)/soup3035.safetensors $(RUNS)/stage37.safetensors -o $(RUNS)/soup3537.safetensors
	$(TRAIN384_CCP_CLIP_WEIGHTED) -o $(RUNS)/stage41.safetensors $(STAGE41_FLAGS) \
		--checkpoint-dir $(RUNS)/checkpoints41 --from $(RUNS)/soup3537.safetensors
	$(BLURVID) soup $(RUNS)/soup3537.safetensors $(RUNS)/stage41.safetensors -o $(RUNS)/soup3741.safetensors
	$(BLURVID) export-int8 $(RUNS)/soup3741.safetensors --calibration $(DATA_CACHE)/train/images
	$(BIN)/python -m pipeline.hardmining --model $(RUNS)/soup3741.safetensors --train $(DATA384_CACHE)/train \
		--base $(DATA384_CACHE)/train-ccp-clip-weighted --out $(DATA384_CACHE)/train-hard-weighted
	$(TRAIN384_HARD_WEIGHTED) -o $(RUNS)/stage43.safetensors $(STAGE43_FLAGS) \
		--checkpoint-dir $(RUNS)/checkpoints43 --from $(RUNS)/soup3741.safetensors
	$(BLURVID) soup $(RUNS)/soup3741.safetensors $(RUNS)/stage43.safetensors -o $(RUNS)/soup4143.safetensors
	$(BLURVID) export-int8 $(RUNS)/soup4143.safetensors --calibration $(DATA_CACHE)/train/images
	$(BIN)/python -m pipeline.hardmining --model $(RUNS)/soup4143.safetensors --train $(DATA384_CACHE)/train \
		--base $(DATA384_CACHE)/train-ccp-clip-weighted --out $(DATA384_CACHE)/train-hard-weighted-v21
	$(TRAIN384_HARD_WEIGHTED_V21) -o $(RUNS)/stage51.safetensors $(STAGE51_FLAGS) \
		--checkpoint-dir $(RUNS)/checkpoints51 --from $(RUNS)/soup4143.safetensors
	$(BLURVID) soup $(RUNS)/soup4143.safetensors $(RUNS)/stage51.safetensors -o $(MODEL)
	$(BLURVID) export-int8 $(MODEL) --calibration $(DATA_CACHE)/train/images
	$(BLURVID) evaluate $(MODEL) $(DATA_CACHE)/eval/eg1800-test --backend torch
	$(BLURVID) evaluate $(MODEL) $(DATA_CACHE)/eval/eg1800-test --backend onnx

# A candidate trained from scratch on a CUDA GPU in GPU_MINUTES, from the data `make model` prepares
# (or `python -m pipeline.dataprep --out DIR`, then DATA_CACHE=DIR), scored on the three test sets.
# Not yet run on a GPU: none was lent to the sessions that built v14 (MODEL.md, Training on a GPU).
# BLURVID="python3 -m pipeline" runs it where blurvid is not installed, as on a bare GPU machine.
GPU_MINUTES ?= 7
GPU_DEVICE ?= cuda
GPU_FLAGS ?= --bs 64 --workers 12 --size 128 --lr 4e-3 --loss ce+dice --work-size 192x112
GPU_RUN ?= $(RUNS)/gpu
# The sets to score there; GPU_SETS=heldout-frames where the other two cannot travel (their images
# are links into ../shared), and score those here afterwards.
GPU_SETS ?= eg1800-test ccp-test heldout-frames
model-gpu:  ## train a candidate from scratch on a CUDA GPU (minutes) and score it
	$(BLURVID) train $(DATA_CACHE)/train -o $(GPU_RUN).safetensors --device $(GPU_DEVICE) $(GPU_FLAGS) --minutes $(GPU_MINUTES) \
		--checkpoint-dir $(GPU_RUN)-checkpoints
	for set in $(GPU_SETS); do \
		$(BLURVID) evaluate $(GPU_RUN).safetensors $(DATA_CACHE)/eval/$$set --backend torch \
			--device $(GPU_DEVICE) --json > $(GPU_RUN)-$$set.json; \
	done

clean:  ## remove outputs (keeps data/ and the model)
	rm -rf output/*
