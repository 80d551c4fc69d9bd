"""Audio side of synctalk: the mel front-end, the audio-visual encoder (AVE), its training,
checkpoint import, sync scoring and per-frame features.

Modules:
    mel         16 kHz audio → normalised log-mel spectrogram → per-video-frame windows.
    ave         the SyncNet/Wav2Lip-expert style encoder, its file format and identity.
    checkpoint  import of SyncTalk ``audio_visual_encoder.pth`` / Wav2Lip ``lipsync_expert.pth``.
    dataset     mouth crops + mel per clip (subject dirs or plain videos), per-clip normalisation.
    sampling    in-sync / shifted training pairs.
    train       sync-expert training (``synctalk ave train``).
    score       LSE-style sync confidence and offset (``synctalk ave score``).
    features    AVE or HuBERT/wav2vec2 (local directory) features per frame, cached per subject.
    streaming   incremental features from audio chunks, equal to the offline path.
"""
