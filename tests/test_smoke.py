import gateway


def test_quick_start() -> None:
    class MyCustomLLM(gateway.CustomLLM):
        def completion(self, *args, **kwargs):
            return gateway.completion(
                model="gpt-3.5-turbo",
                messages=[{"role": "user", "content": "Hello world"}],
                mock_response="Hi!",
            )

    gateway.custom_provider_map = [{"provider": "my-custom-llm", "custom_handler": MyCustomLLM()}]
    resp = gateway.completion(
        model="my-custom-llm/my-fake-model",
        messages=[{"role": "user", "content": "Hello world!"}],
    )
    assert resp.choices[0].message.content == "Hi!"
