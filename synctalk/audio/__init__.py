"""Audio side of synctalk: the mel front-end, the audio-visual encoder (AVE) and its
checkpoint import.

Modules:
    mel         16 kHz audio → normalised log-mel spectrogram → per-video-frame windows.
    ave         the SyncNet/Wav2Lip-expert style encoder, its file format and identity.
    checkpoint  import of SyncTalk ``audio_visual_encoder.pth`` / Wav2Lip ``lipsync_expert.pth``.
"""
