"""The Step-Audio-EditX language model: Step1 weights, batched generation and its prompt."""
